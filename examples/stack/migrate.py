"""A one-shot job for the example stack: pretends to migrate, then exits 0."""

import time

print("migrate: applying 3 migrations", flush=True)
time.sleep(0.3)
print("migrate: done", flush=True)
