"""Optional operating-system levers: libc calls, page-cache options and diagnostics, the cache-friendly copy, rusage."""
