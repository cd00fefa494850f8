"""Training: from a request to a model in a run directory: starting a new run or resuming one, the loop
(truncated stateful BPTT, the evaluation and saving cadence), the schedule and stop rules, what a
checkpoint holds to resume, the metrics records, the events progress displays receive, and the process
group of data-parallel training.

May import: every stage below it (`charnn.runtime`, `data`, `model`, `runs`, `evaluate`, `generate`,
`plan`), never `charnn.serve`, `charnn.bench` or `charnn.cli`.
"""
