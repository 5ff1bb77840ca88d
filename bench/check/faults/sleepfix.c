/* Preloaded before libfaketime by `htapkv check --nemesis clock`.
 *
 * libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 breaks
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...), which Python 3.11+
 * uses for time.sleep(): every sleep fails with EINVAL. The monotonic clock is
 * not faked, so passing the call straight to the kernel is exact. (With the
 * monotonic clock faked instead, timed waits on locks and events overshoot by
 * the skew: a "-30s" process waits 30 s for a 0.5 s timeout.)
 *
 * Build: cc -shared -fPIC -O2 -o sleepfix.so sleepfix.c */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    /* Returns the error number (not -1/errno), as the C library's does. */
    return syscall(SYS_clock_nanosleep, clk, flags, req, rem) == 0 ? 0 : errno;
}

int nanosleep(const struct timespec *req, struct timespec *rem) {
    return (int)syscall(SYS_nanosleep, req, rem);
}
