"""Run directories: where a run's files are, who may write them, and reading them back.

Owns: a run directory's layout, the runs root and `runs/latest` (`rundir`), what a model argument names
(`locate`: a run, a checkpoint, a .safetensors file or a base model, and which of a run's files to
read), the rules of writing one (`claim`: the lock, the checks on --out, an old run set aside), the one
object that claims a directory and carries a run through its life (`session`: new, --overwrite or
--resume; settled on its first model, or abandoned and an old run put back; runs/latest), what training
writes there (`writer`: metrics lines, checkpoints, config.json), and reading runs back: `charnn runs`
and `plot` (`history`, `metrics`) and `charnn info` (`info`).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data` and `charnn.model`. Torch-free but
for `writer` and `session`, which training uses (checkpoints are read without PyTorch where they can be).
"""
