"""Reading jobs' logs: the log store the workers write (local files or a bucket), opened from the settings."""

from tsky.ops.log_store import LogStore as LogStore
from tsky.ops.log_store import log_store as log_store
