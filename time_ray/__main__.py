from time_ray.cli import main

raise SystemExit(main())
