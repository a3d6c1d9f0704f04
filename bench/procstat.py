"""What a benchmark reads of its own process (Linux ``/proc``)."""


def status_kb(field: str) -> int:
    """A kB field of ``/proc/self/status`` (VmRSS, VmHWM...); 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0
