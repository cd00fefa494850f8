"""What a run will be, decided before its first step: the request, the model's size, the device's speed.

Owns: what `charnn train` was asked and the checks made before PyTorch loads (`request`), the sizing
rule (`sizing`, pure), model shapes and device speed tables (`shapes`), timing this device (`speed`),
a run's plan, `--dry-run` and planning again after the first minute (`planning`), and starting from
another model (`pretrained`: --init-from's vocabulary and weights).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model`, `charnn.runs`
and `charnn.evaluate` (a timing scores text as evaluation does).
"""
