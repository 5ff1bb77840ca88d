/* LD_PRELOAD shim for `htapkv check --nemesis disk`: while the file named by
 * HTAPKV_FAILFSYNC_TRIGGER exists, fsync, fdatasync, syncfs and
 * sync_file_range fail with EIO (without syncing anything). Each injected
 * failure appends one line ("<call> <fd> <path>") to HTAPKV_FAILFSYNC_LOG if
 * set, as evidence that the fault reached the process. With the trigger file
 * absent every call goes to the C library unchanged.
 *
 * Build: cc -shared -fPIC -O2 -o failfsync.so failfsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int failing(void) {
    const char *trigger = getenv("HTAPKV_FAILFSYNC_TRIGGER");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

static void note(const char *call, int fd) {
    const char *logpath = getenv("HTAPKV_FAILFSYNC_LOG");
    char link[64], target[512], line[640];
    ssize_t n;
    int out;
    if (logpath == NULL)
        return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    target[n > 0 ? n : 0] = '\0';
    n = snprintf(line, sizeof line, "%s %d %s\n", call, fd, target);
    out = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out >= 0) {
        if (write(out, line, (size_t)n) < 0) { /* evidence is best effort */ }
        close(out);
    }
}

#define REAL(name) ((name##_fn)dlsym(RTLD_NEXT, #name))

typedef int (*fsync_fn)(int);
typedef int (*fdatasync_fn)(int);
typedef int (*syncfs_fn)(int);
typedef int (*sync_file_range_fn)(int, off_t, off_t, unsigned int);

int fsync(int fd) {
    if (failing()) { note("fsync", fd); errno = EIO; return -1; }
    return REAL(fsync)(fd);
}

int fdatasync(int fd) {
    if (failing()) { note("fdatasync", fd); errno = EIO; return -1; }
    return REAL(fdatasync)(fd);
}

int syncfs(int fd) {
    if (failing()) { note("syncfs", fd); errno = EIO; return -1; }
    return REAL(syncfs)(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    if (failing()) { note("sync_file_range", fd); errno = EIO; return -1; }
    return REAL(sync_file_range)(fd, offset, nbytes, flags);
}
