"""Privacy: an audit of what noise obfuscation hides, and training targets that need no clean image.

- `matcher`: a simple blur/downsample/NCC matcher; linkage and re-identification hit rates with chance.
- `audit`: the per-noise-level audit (distortion, linkage, re-identification, reversal by denoisers).
- `verdict`: the console table, the verdict sentences and the Markdown report section.
- `targets`: `noise2noise`, `neighbor2neighbor` and `r2r`, registered with `meddenoise.engine.targets`.

Submodules import torch; import them where they are used (this package's import stays light).
"""
