"""The sweep layer: grid expansion, launch, status, probe, check, collect. Never imports torch, so
the CLI answers in well under a second."""
