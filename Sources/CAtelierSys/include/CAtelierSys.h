#ifndef CATELIERSYS_H
#define CATELIERSYS_H

#include <sys/types.h>

/// Options for `atelier_spawn`. Any fd set to -1 is inherited from /dev/null.
typedef struct {
  const char *path;          // the executable file
  char *const *argv;
  char *const *envp;
  const char *cwd;           // NULL keeps the parent's
  int uid;                   // -1 keeps the parent's
  int gid;
  const unsigned int *groups; // supplementary groups, only used when uid >= 0
  int ngroups;
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
  int new_session;           // setsid(): own process group, no controlling tty
  int controlling_tty;       // when new_session, make stdin the controlling terminal
  const int *inherit_fds;    // become the child's 3, 4, … (everything else above 2 is closed)
  int ninherit;
} atelier_spawn_options;

/// fork + exec with only async-signal-safe calls in the child. Returns -1 with errno when the
/// fork fails. Otherwise returns the child's pid; when the child could not exec, `*exec_errno`
/// holds the reason (reported through a close-on-exec pipe) and the child exits with 127 and
/// must still be reaped.
pid_t atelier_spawn(const atelier_spawn_options *options, int *exec_errno);

/// Attaches to the TAP device `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR): a descriptor for a
/// VMM that may not open /dev/net/tun itself. Returns the descriptor, or -1 with errno.
int atelier_tap_open(const char *name);

/// Sends `len` bytes on a connected Unix socket with descriptor `fd` attached (SCM_RIGHTS), as
/// QMP's `getfd` and `add-fd` expect. Returns the bytes sent, or -1 with errno.
long atelier_send_with_fd(int sock, const void *buf, unsigned long len, int fd);

/// Copies the allocated extents of `in` (found with SEEK_DATA/SEEK_HOLE) into `out` at the
/// same offsets, with copy_file_range (pread/pwrite where the kernel cannot); `out` is sized
/// to `size` first, so holes stay holes. Reports the bytes copied. 0, or -1 with errno.
int atelier_sparse_copy(int in, int out, long long size, long long *copied);

/// Opens a pseudo-terminal pair. Returns 0 or -1 with errno.
int atelier_openpty(int *master_fd, int *slave_fd, unsigned short rows, unsigned short cols);
int atelier_set_winsize(int fd, unsigned short rows, unsigned short cols);

/// Minimal network configuration without relying on tools in the guest image.
int atelier_if_up(const char *ifname);
int atelier_if_set_ipv4(const char *ifname, const char *address, int prefix_length);
int atelier_route_add_default(const char *gateway);
/// Sets the hardware address ("aa:bb:cc:dd:ee:ff"); the interface is taken down and up.
int atelier_if_set_mac(const char *ifname, const char *mac);

/// A listening AF_VSOCK stream socket on `port` (any CID), or -1.
int atelier_vsock_listen(unsigned int port);
/// An AF_VSOCK stream connection to (cid, port), or -1 with errno.
int atelier_vsock_connect(unsigned int cid, unsigned int port);
/// Grows the ext4 file system mounted at `mountpoint` online to fill `device`
/// (EXT4_IOC_RESIZE_FS). Reports the usable sizes before and after. 0, or -1 with errno.
int atelier_grow_filesystem(const char *mountpoint, const char *device,
                            unsigned long long *old_bytes, unsigned long long *new_bytes);
/// A TCP connection to 127.0.0.1:port, or -1.
int atelier_connect_loopback(unsigned short port);
/// Copies bytes both ways between two connected sockets until both directions end, then
/// closes both. Blocks: run it on its own thread.
void atelier_relay(int a, int b);

/// pipe2(O_CLOEXEC), which Swift's Glibc module does not export.
int atelier_pipe_cloexec(int fds[2]);

/// Mixes `count` bytes into the kernel's entropy pool (crediting them) and reseeds the
/// CRNG, so VMs restored from one snapshot stop sharing random state. Needs root.
int atelier_add_entropy(const unsigned char *bytes, int count);

/// prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants (daemonized VMMs) are re-parented to
/// this process, so it can reap them instead of leaving zombies to an init that may not.
int atelier_set_child_subreaper(void);

/// Sets the wall clock (CLOCK_REALTIME).
int atelier_set_realtime(long long seconds, long nanoseconds);

/// sync + reboot(RB_POWER_OFF): ends the VM when called by PID 1.
int atelier_power_off(void);

/// Extended attributes of a path, never following a symlink at it (Swift's Glibc module
/// lacks <sys/xattr.h>). Same results as llistxattr/lgetxattr.
long atelier_llistxattr(const char *path, char *list, unsigned long size);
long atelier_lgetxattr(const char *path, const char *name, void *value, unsigned long size);

int atelier_wifexited(int status);
int atelier_wexitstatus(int status);
int atelier_wifsignaled(int status);
int atelier_wtermsig(int status);

#endif
