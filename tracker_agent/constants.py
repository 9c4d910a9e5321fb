"""Every default, limit and protocol name in one place: Settings, the drain policy, the HTTP
transport, validation and the outbox read them from here, and nowhere else defines them.

Imports nothing: any module may import it.
"""

from __future__ import annotations

# -- the API (facts from its reference) ------------------------------------------------------

DEFAULT_URL = "https://api.exponea.com"
#: Batch command names, as the batch endpoint spells them (also the outbox's row kinds).
EVENT_COMMAND = "customers/events"
CUSTOMER_COMMAND = "customers"
SYSTEM_TIME_COMMAND = "system/time"
COMMAND_NAMES = frozenset({EVENT_COMMAND, CUSTOMER_COMMAND, SYSTEM_TIME_COMMAND})
#: Commands one batch request may hold.
MAX_BATCH_COMMANDS = 50
#: Batches one drain claim may take on a backend that takes several (PostgreSQL; see
#: Backend.max_claim_batches): their rows leased together, the settle of two batches one
#: transaction. Two cut the outbox work per batch by a quarter; three did worse.
MAX_CLAIM_BATCHES = 2
#: One event or customer update must stay under this many bytes of JSON.
MAX_COMMAND_BYTES = 800_000
#: One property value must stay under this many bytes.
MAX_PROPERTY_VALUE_BYTES = 16_000
#: The API's tracking limit per source IP, requests per second.
API_RATE_LIMIT = 100.0
#: The most batches a process may keep on the wire at once (Settings.concurrent_batches): at
#: 100 requests/s, 16 cover round trips of 160 ms; more only multiplies a crash's duplicates.
MAX_CONCURRENT_BATCHES = 16

# -- HTTP ------------------------------------------------------------------------------------

DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0  # read timeout; with connect: the total deadline
DEFAULT_CONNECT_TIMEOUT_SECONDS = 3.05
DEFAULT_READ_RETRIES = 2  # reads only: writes are never retried by the client
READ_RETRY_BASE_SECONDS = 0.5
READ_RETRY_CAP_SECONDS = 10.0
#: The longest Retry-After a read obeys: its caller is waiting.
READ_MAX_RETRY_AFTER_SECONDS = 60.0
#: The longest Retry-After the drain obeys, so a bogus header cannot stall it for days.
DRAIN_MAX_RETRY_AFTER_SECONDS = 3600.0
#: The largest answer read (bytes, after content decoding); a longer one is cut off.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# -- the outbox and its drain ----------------------------------------------------------------

DEFAULT_MAX_ROWS = 5_000_000
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_BATCH_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_INTERVAL_SECONDS = 1.0
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_BACKOFF_BASE_SECONDS = 1.0
DEFAULT_BACKOFF_CAP_SECONDS = 300.0
DEFAULT_PAUSE_PROBE_INTERVAL_SECONDS = 60.0
#: The first probe after a pause begins comes this soon; each failed one doubles the wait, up to
#: pause_probe_interval (a 401 blip costs seconds; a revoked key is still probed politely).
FIRST_PAUSE_PROBE_SECONDS = 1.0
#: While delivery backs off because the API could not be reached at all (refused, reset, DNS,
#: timeout), one GET system/time this often (reach_probe_interval): when it answers, the
#: backoff ends at once instead of after up to backoff_cap.
DEFAULT_REACH_PROBE_INTERVAL_SECONDS = 5.0

# -- clock correction (devices whose clock is wrong) -----------------------------------------

#: A learned offset below this never changes a timestamp (network jitter, rounding).
CLOCK_THRESHOLD_SECONDS = 2.0
#: A timestamp before this (2026-01-01T00:00:00Z, before this package's first release) is
#: impossible: the device's clock was wrong (a dead RTC battery boots in 1970 or 2000).
CLOCK_SANE_FLOOR = 1_767_225_600.0
#: A timestamp further than this ahead of the server's time is impossible too.
CLOCK_FUTURE_TOLERANCE_SECONDS = 3600.0
#: With clock correction, the server's clock is asked again this often while delivering (the
#: reference of a long boot stays fresh; a failure changes nothing).
CLOCK_RELEARN_SECONDS = 3600.0
#: With clock correction, the drain holds claims until the server's clock is known; a server
#: that answers GET system/time this many times without its time (404, 5xx, a proxy's page)
#: no longer holds delivery back: the boot's commands go out as recorded, counted.
CLOCK_LEARN_ATTEMPTS = 3
#: ...and its clock is asked again, at best effort, this often until it is learned.
CLOCK_UNKNOWN_RETRY_SECONDS = 300.0
#: How many boots' learned clock references the outbox keeps (the most recent ones).
CLOCK_MAX_BOOTS = 16
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_BUSY_TIMEOUT_SECONDS = 30.0
#: How long `import` remembers an imported line (its ledger key): running the same import again
#: within this many days queues nothing twice. Pruned by the next import.
DEFAULT_IMPORT_LEDGER_DAYS = 30.0
DAY_SECONDS = 86_400
#: Lines per transaction in `import`: an fsync per chunk. A bad line no longer fails its chunk,
#: so chunks need not be small; the write lock is held ~20 ms per chunk.
DEFAULT_IMPORT_CHUNK_SIZE = 2000
#: A longer line stops `import` (a command is under 800 KB as JSON, but a line may spell it
#: with six-byte \u escapes). Without a limit a file with no newline is read to exhaustion.
MAX_IMPORT_LINE_BYTES = 8 * 1024 * 1024
#: Bad lines an import reports one by one; the rest are counted.
MAX_REPORTED_BAD_LINES = 20

# -- the embedded agent's life cycle ---------------------------------------------------------

#: How long close() (and interpreter exit) goes on delivering what is queued; 0: not at all.
DEFAULT_CLOSE_TIMEOUT_SECONDS = 5.0
#: A command waiting this long, with no drainer in this process and no sign of one on the
#: outbox, gets one WARNING; 0: never. Keep it above the daemon's drain_interval.
DEFAULT_WARN_UNDRAINED_AFTER_SECONDS = 60.0

# -- the outbox on PostgreSQL ----------------------------------------------------------------

#: Advisory-lock class of a customer's lock (two-key form, key hashtext(customer_key)): taken
#: by enqueues and deletes of that customer's rows, so its ids follow its commit order and its
#: head flag stays exact. Frozen in migration 0003's triggers.
PG_CUSTOMER_LOCK_CLASS = 1953655649
#: Advisory lock (one-key form) held while migrating: many hosts starting at once migrate once.
PG_MIGRATE_LOCK = 0x74726B61_00000002
#: Advisory lock (one-key form) of the import ledger: a lookup and the insert after it see no
#: other importer in between, and the ledger log's ids commit in order.
PG_LEDGER_LOCK = 0x74726B61_00000003
#: queue_counters rows on PostgreSQL, summed on read (migration 0001 creates them).
PG_COUNTER_ROWS = 16
#: Seconds to wait for the server when connecting.
PG_CONNECT_TIMEOUT_SECONDS = 10

# -- receipts --------------------------------------------------------------------------------

#: Delivered receipts are remembered this long (seconds) ...
DEFAULT_RECEIPT_RETENTION_SECONDS = 7 * 86_400.0
#: ... and at most this many (the oldest commands, by id, are forgotten first).
DEFAULT_RECEIPT_MAX_ROWS = 1_000_000
#: How often (at most) a drainer prunes delivered receipts past the retention.
RECEIPT_PRUNE_INTERVAL_SECONDS = 60.0
#: Receipts deleted per transaction while pruning (the write lock is never held long).
RECEIPT_PRUNE_BATCH_ROWS = 10_000

# -- observability ---------------------------------------------------------------------------

#: Upper bounds (seconds) of the request duration histogram's buckets (+Inf is implied).
REQUEST_DURATION_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
