"""`python -m robustmed …` runs the command line (handy where the console script is not on PATH)."""
from robustmed.cli import main

raise SystemExit(main())
