"""Every tunable number, once, with its unit in its name.

The defaults of the command-line options come first, then the internal constants grouped by
the part that uses them. The configurations built from them, validated, are in settings.py.
"""

from __future__ import annotations

# -- option defaults ------------------------------------------------------------------------

DEFAULT_ADDRESS = "tcp://127.0.0.1:3050"
DEFAULT_BUFFER_SIZE = 50_000
"""Jobs buffered when --size is not given; and at most `DEFAULT_BUFFER_BYTES` of them."""
DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE_TIMEOUT_S = 30.0
DEFAULT_MASTER_TIMEOUT_S = 300.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_DEATHS = 3
DEFAULT_STOP_WAIT_S = 30.0
DEFAULT_LINGER_S = 3.0
"""After a run completes, how long tm-master stays to tell late slaves so."""
DEFAULT_MAX_MESSAGE_MB = 64
DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_MB * 1024 * 1024
"""Largest JOBS message: a batch is cut to fit it, a job alone over it fails."""
DEFAULT_MAX_BUFFER_MB = 256
"""What the master may hold of jobs, buffered and leased, in pickled MiB (as estimated from
the sizes of the jobs seen so far)."""

# -- liveness and checkpoints ---------------------------------------------------------------

HEARTBEAT_INTERVAL_S = 1.0
"""Between two heartbeats of a slave, and two PINGs of the master to a slave holding jobs."""
IDLE_BEAT_S = 5.0
"""Between two heartbeats of a slave holding nothing (a heartbeat then only says it lives): a
quarter of the master's lease timeout if that is shorter, never less than the interval."""
IDLE_PING_S = 5.0
"""Between two PINGs to a slave holding nothing (no batch of it can be lost on the way, so a
PING only says the master lives): a quarter of its --master-timeout if that is shorter, and
half of `MASTER_WAIT_LOG_S`, after which a slave says it is waiting for a master."""
CHECKPOINT_INTERVAL_S = 1.0
PROGRESS_LOG_INTERVAL_S = 5.0
"""Between two progress log lines when the output is not a terminal."""
FAILURE_SUMMARY_S = 5.0
"""Failures after the first of their type are said in counts, at most this often."""
RATE_WINDOW_S = 10.0
"""The rate shown is over this much of the recent past."""
FAILURE_WINDOW_JOBS = 1000
"""--max-failures P%: the last this many settled jobs are judged."""
FAILURE_MIN_JOBS = 100
"""--max-failures P%: not judged before this many jobs settled."""
CONTROL_SAMPLE_S = 1.0
"""How often the rates tm-ctl status reports are sampled."""
CONTROL_TIMEOUT_S = 5.0
"""How long tm-ctl waits for a master's answer."""
RETRY_BACKOFF_BASE_S = 0.5
RETRY_BACKOFF_MAX_S = 30.0

# -- the master -----------------------------------------------------------------------------

MASTER_TICK_S = 0.25
"""Between two rounds of the master's periodic work (expiry, pings, checkpoints, progress)."""
FEED_TURN_S = 0.01
"""Longest the feeder thread collects jobs before it hands them over: long enough to make
chunks of thousands when the stream is fast, short enough that a slow stream's jobs go out
as they come."""
FEED_STEP_MAX_JOBS = 4096
"""Most jobs the feeder pulls in one C-level step (see feeder.py)."""
FEED_SKIP_STEP_JOBS = 100_000
"""Jobs skipped in one step when a stream is resumed by position: between two steps, the
feeder sees that it should stop."""
FEED_POLL_MAX_S = 0.05
"""Longest the master waits between two looks at a turn of the feeder that is blocked in the
stream (from FEED_TURN_S, doubling while there is nothing new): what a job yielded just before
a wait may wait for. 20 looks a second cost the hub nothing measurable; 0.2 s let a stream
that started late (a loaded machine) hold its first jobs back that long."""
DONE_LINGER_S = 2.0
"""After the run, how long the master waits for slaves to acknowledge DONE."""
FAREWELL_POLL_S = 0.002
"""How often, meanwhile, it looks whether they have: tm-run's end waits on it."""
DROP_LOG_INTERVAL_S = 10.0
"""Least time between two log lines about dropped messages or refused connections: a flood
must not flood the log."""
BEAT_GATHER_S = 0.01
"""After a heartbeat, when nothing else is waiting, how long the master lets pass before it
takes the next message. A heartbeat asks for no answer, and a thousand slaves' heartbeats come
one at a time: a wake of the master for each costs it more than the heartbeat itself, while
what comes meanwhile (an acknowledgement, at most this late) is taken with one wake. Slaves
hold `SLAVE_WORK_AHEAD_S` of work, so they never wait for it."""
WELCOME_REPEAT_S = 0.5
"""Least time between two WELCOMEs to one slave: knocks are not answered more often."""
DISK_TROUBLE_LOG_INTERVAL_S = 60.0
"""While a file cannot be written, how often the master says so again."""
LISTEN_BACKLOG = 4096
"""Connections the master's socket queues before accepting them (the kernel may cap it)."""
MAX_TRACKED_SENDERS = 100_000
"""Bound on the replay counters and pending welcomes kept per sender identity."""

# -- dispatch: what the master leases to one slave ------------------------------------------

MAX_BATCH_JOBS = 50_000
"""Largest batch in one message (and the unit of acknowledgement): for instant jobs, the whole
default buffer (`DEFAULT_BUFFER_SIZE`) in one message, since what master and slave spend is per
message more than per job. 10 M no-op jobs through tm-run, A/B: batches (and buffer) of 50 000
took 0.87 the time and 0.84 the CPU of 10 000; 20 000 took 0.93 and 0.90."""
FIRST_BATCH_JOBS = 100
"""Batch size until the pickled size of a job is known."""
MAX_WINDOW_JOBS = 100_000
"""Most jobs one slave may hold at once: the bound on a slave's leases. A slave asks for
`SLAVE_WORK_AHEAD_S` of work; this binds only for jobs of a microsecond or less (instant jobs:
20 ms of them), and `WINDOW_BYTES` binds first for any job over 42 bytes pickled."""
# A megabyte a batch: with half that, 1 KB jobs spent a tenth more of the master's time per
# job on what each message costs in Python (1 M to 3 M such jobs through tm-run, A/B).
BATCH_BYTES = 1024 * 1024
WINDOW_BYTES = 4 * 1024 * 1024
"""The same two bounds in pickled bytes, for large jobs: what the master holds for each slave
(and copies into messages for it) stays a few megabytes whatever the size of a job."""
DEFAULT_BUFFER_BYTES = 8 * BATCH_BYTES
"""Without --size, what the buffer holds is also bounded in pickled bytes: 50 000 instant jobs,
but 8 000 of 1 KB. A buffer of 50 000 jobs of 1 KB (50 MB) made them a third slower and the
master 40 MiB larger than one of 10 000 (1 M jobs through tm-run, A/B); 8 MiB of them run as
fast as 10 000 did. A --size given is taken as it is: a stream that comes in bursts (a slow
query a page) may want a deeper buffer, bounded by --max-buffer-mb alone."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message a master takes from a slave (they are small: acknowledgements with their
errors); what a slave takes is its --max-message-mb."""
MESSAGE_SLACK_BYTES = 4096
"""Headroom beyond the largest body for the kind, header and signature frames."""
MAX_ERROR_CHARS = 100_000
"""Longest error text (a traceback, usually) kept from a slave's report."""
ACK_ERROR_CHARS = 4 * 1024 * 1024
"""Most characters of error text (messages and tracebacks) one acknowledgement carries: beyond
it each failure's texts are cut to an equal share. An ACK over `MAX_MESSAGE_BYTES` is dropped
by the master while the slave forgets the batch, and the run hung with it leased: 50 000
failures of 1.3 KB each made one. JSON may spell a character in 6 bytes, and exception names
are at most `MAX_NAME_CHARS`: 4 Mi characters keep a window's failures under 64 MiB."""
MAX_NAME_CHARS = 256
"""Longest identity, nonce or exception name taken from a message."""
MAX_HOST_CHARS = 200

# -- the slave ------------------------------------------------------------------------------

SLAVE_WORK_AHEAD_S = 0.2
"""How much work, in seconds, a slave asks to hold so that it never waits for the master."""
PIECE_S = 0.05
"""Work one greenlet does in one turn before it lets the others (and the socket) run."""
STEAL_AFTER_S = 0.25
"""A piece still running after this long (a job in it is slow) has the jobs after that job
taken over by an idle greenlet: one slow job holds up only itself."""
SLAVE_STOP_WAIT_S = 30.0
"""On SIGINT/SIGTERM, how long running jobs get to finish before the slave leaves anyway."""
JOIN_RETRY_S = 0.05
"""How often a slave knocks while no master has welcomed it, for the first `JOIN_FAST_S`
(the heartbeat thread keeps knocking every second after that)."""
JOIN_FAST_S = 5.0
JOIN_FIRST_RETRY_S = 0.005
"""The first knocks come sooner, doubling up to `JOIN_RETRY_S`: 5, 10, 20, 40 ms apart."""
SLAVE_WAKE_S = 0.2
"""Longest the slave's loop sleeps without a message, so that it notices it should exit."""
ACK_DELAY_S = 0.1
"""Longest a slave with plenty of queued work holds back an acknowledgement, to send several in
one message: each message wakes the master, and on a host with as many busy slaves as cores
the master's turn is taken from a slave. A slave running low on work acknowledges at once."""
JOB_TIMEOUT_GRACE_S = 1.0
"""How long past --job-timeout a job that will not stop may run before its watchdog replaces
the slave's process (one that yields is stopped at the limit itself)."""
SLAVE_HARD_STOP_S = 5.0
"""After a stop signal's SLAVE_STOP_WAIT_S, how long a slave whose jobs hold its loop gets
before its watchdog makes it leave anyway."""
MEMORY_CHECK_S = 0.5
"""Between two looks at a slave's resident memory (for --max-memory)."""
MASTER_WAIT_LOG_S = 10.0
"""Between two lines of a slave that waits for a master."""
RECONNECT_FIRST_MS = 10
RECONNECT_MAX_MS = 4000
"""Reconnect quickly at first (a restarted master is back within a second), backing off to a
few seconds so that a long outage does not mean a storm of connection attempts."""

# -- supervision (tm-spawn, tm-run) ---------------------------------------------------------

MAX_RESTARTS = 5
"""Deaths in a row after which a slot is given up on."""
GONE_GRACE_S = 1.0
"""After a slave's process is known to be gone, how long its last messages (acknowledgements,
its goodbye, its watchdog's word) have to be read before its leases are taken back: they were
sent before it ended, but may come in after the news of its end, which travels another way."""
SLAVES_PER_CPU_WARNING = 4
"""tm-run warns when asked for more slaves than this many per CPU."""
RESTART_HEALTHY_S = 60.0
"""A slave that ran this long before it died starts its count of deaths afresh."""
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
SUPERVISE_POLL_S = 0.2
SUPERVISOR_STOP_WAIT_S = 40.0
"""How long slaves get to finish their running jobs after a forwarded signal."""
SLAVE_EXIT_GRACE_S = 1.0
"""After a complete run, how long tm-run lets its slaves leave by themselves."""

# -- security -------------------------------------------------------------------------------

SECRET_ENV = "TASKMASTER_SECRET"
MIN_SECRET_BYTES = 16
