"""The data's way in: corpus -> vocabulary -> token file -> training windows.

Owns: reading corpus files and stdin in chunks (`corpus`), the vocabulary of characters or bytes
(`vocab`), token files, memory-mapped and cached (`tokens`), the validation split and the contiguous
streams of truncated BPTT (`batches`), and what every writer and reader of files shares: atomic writes,
a full disk as one error, the kinds of file charnn tells apart (`files`), and values read back from
files charnn wrote, each taken only as what it should be (`checked`).

May import: charnn's top-level modules and `charnn.runtime`. Torch-free except `batches` (the windows
are tensors), which nothing torch-free imports.
"""
