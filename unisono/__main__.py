from unisono.cli import main

raise SystemExit(main())
