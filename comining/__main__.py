from comining.cli import main

raise SystemExit(main())
