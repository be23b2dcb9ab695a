import sys

try:
    from .cli.main import main
except KeyboardInterrupt:  # Ctrl-C while torch is being imported: one line, not a traceback
    print("mobilenets: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
