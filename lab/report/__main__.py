"""`python -m lab.report`: a report regenerated from its results.json, or two runs compared."""

import sys

from lab.report.writing import main

sys.exit(main())
