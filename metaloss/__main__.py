from metaloss.cli import main

raise SystemExit(main())
