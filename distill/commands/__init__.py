"""The commands beyond training: `distill eval`, `export`, `bench` (and `bench --data`), `prepare`, `fit`.
`distill/cli.py` parses them all and imports a command's module only when it runs."""
