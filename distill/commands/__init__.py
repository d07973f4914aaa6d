"""The commands beyond training (`distill eval`, `export`, `bench`); `distill.cli` parses them all."""
