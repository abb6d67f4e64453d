"""A hook for the example stack: reads tether's events (one JSON object per
line on stdin) and writes a note to stderr when a service exits. A hook could
also answer with commands on stdout, such as {"restart": "api"}."""

import json
import sys

for line in sys.stdin:
    event = json.loads(line)
    if event.get("event") == "exit":
        print(f"noticed: {event['service']} {event['exit']}", file=sys.stderr, flush=True)
