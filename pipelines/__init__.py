"""The `txl` commands and the layers under them.

`cli` (the `txl` entry point) -> `commands/` (one module per command) -> `training/` -> `model/` -> `data/`,
`runtime/`; `errors` is shared by every layer. A module imports only from its own layer or the layers below it
(docs/ARCHITECTURE.md).
"""
