"""Training: from a request to a model in a run directory.

Owns: starting a new run, with its plan and its run session around the loop (`start`), resuming one
(`resume`), the loop itself (`trainer`: which window comes next, at which learning rate, when to log,
evaluate and save; it writes to the writer it is given and never sees a run's claim), the steps it takes
(`learner`: the model, its optimiser and precision, the state carried from window to window), the
schedule and stop rules (`schedule`), what a checkpoint holds to resume (`state`), the metrics records
(`log`), the events progress displays receive (`events`) and the process group of data-parallel training
(`distributed`).

May import: every stage below it (`charnn.runtime`, `data`, `model`, `runs`, `evaluate`, `generate`,
`plan`), never `charnn.serve`, `charnn.bench` or `charnn.cli`.
"""
