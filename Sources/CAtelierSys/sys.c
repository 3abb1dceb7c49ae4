#define _GNU_SOURCE
#include "CAtelierSys.h"

#include <sys/xattr.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <net/route.h>
#include <netinet/in.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/close_range.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <netinet/tcp.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <linux/fs.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void child_fail(int report_fd) {
  int err = errno;
  ssize_t ignored = write(report_fd, &err, sizeof(err));
  (void)ignored;
  _exit(127);
}

pid_t atelier_spawn(const atelier_spawn_options *o, int *exec_errno) {
  *exec_errno = 0;
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return -1;
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    close(report[0]);
    close(report[1]);
    if (devnull >= 0) close(devnull);
    errno = err;
    return -1;
  }
  if (pid == 0) {
    // Child: restore default signal dispositions and an empty mask.
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    if (o->new_session && setsid() < 0) child_fail(report[1]);
    int fds[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
    for (int i = 0; i < 3; i++) {
      int fd = fds[i] >= 0 ? fds[i] : devnull;
      if (fd < 0) child_fail(report[1]);
      if (fd == i) {
        int flags = fcntl(fd, F_GETFD);
        fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
      } else if (dup2(fd, i) < 0) {
        child_fail(report[1]);
      }
    }
    if (o->new_session && o->controlling_tty && ioctl(0, TIOCSCTTY, 0) < 0) child_fail(report[1]);
    if (o->uid >= 0) {
      if (setgroups((size_t)o->ngroups, (const gid_t *)o->groups) != 0) child_fail(report[1]);
      if (setgid((gid_t)o->gid) != 0) child_fail(report[1]);
      if (setuid((uid_t)o->uid) != 0) child_fail(report[1]);
    }
    if (o->cwd && chdir(o->cwd) != 0) child_fail(report[1]);
    // Descriptors to hand over: first out of the way (above every target), then into place.
    int moved[32];
    if (o->ninherit > 32) child_fail(report[1]);
    for (int i = 0; i < o->ninherit; i++) {
      moved[i] = fcntl(o->inherit_fds[i], F_DUPFD, 3 + o->ninherit);
      if (moved[i] < 0) child_fail(report[1]);
    }
    for (int i = 0; i < o->ninherit; i++) {
      if (dup2(moved[i], 3 + i) < 0) child_fail(report[1]);
    }
    // Descriptors the parent leaked without CLOEXEC must not reach the new program.
    close_range(3 + (unsigned int)o->ninherit, ~0U, CLOSE_RANGE_CLOEXEC);
    execve(o->path, o->argv, o->envp);
    child_fail(report[1]);
  }
  close(report[1]);
  if (devnull >= 0) close(devnull);
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(report[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n == (ssize_t)sizeof(child_errno)) *exec_errno = child_errno;
  return pid;
}

int atelier_tap_open(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

long atelier_send_with_fd(int sock, const void *buf, unsigned long len, int fd) {
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union {
    char bytes[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                       .msg_controllen = sizeof(control.bytes)};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return (long)n;
}

static int copy_extent(int in, int out, off_t start, off_t end) {
  off_t in_pos = start, out_pos = start;
  while (in_pos < end) {
    ssize_t n = copy_file_range(in, &in_pos, out, &out_pos, (size_t)(end - in_pos), 0);
    if (n > 0) continue;
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP) return -1;
    // The kernel cannot copy between these two: by hand.
    static __thread char buffer[1 << 20];
    while (in_pos < end) {
      size_t want = (size_t)(end - in_pos) < sizeof(buffer) ? (size_t)(end - in_pos) : sizeof(buffer);
      ssize_t got = pread(in, buffer, want, in_pos);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return got == 0 ? 0 : -1;
      for (ssize_t done = 0; done < got;) {
        ssize_t put = pwrite(out, buffer + done, (size_t)(got - done), in_pos + done);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) return -1;
        done += put;
      }
      in_pos += got;
    }
  }
  return 0;
}

int atelier_sparse_copy(int in, int out, long long size, long long *copied) {
  *copied = 0;
  if (ftruncate(out, (off_t)size) != 0) return -1;
  off_t position = 0;
  while (position < (off_t)size) {
    off_t data = lseek(in, position, SEEK_DATA);
    if (data < 0) return errno == ENXIO ? 0 : -1;  // nothing but a hole to the end
    off_t hole = lseek(in, data, SEEK_HOLE);
    if (hole < 0) return -1;
    if (hole > (off_t)size) hole = (off_t)size;
    if (copy_extent(in, out, data, hole) != 0) return -1;
    *copied += hole - data;
    position = hole;
  }
  return 0;
}

int atelier_openpty(int *master_fd, int *slave_fd, unsigned short rows, unsigned short cols) {
  struct winsize ws = {.ws_row = rows, .ws_col = cols};
  if (openpty(master_fd, slave_fd, NULL, NULL, &ws) != 0) return -1;
  fcntl(*master_fd, F_SETFD, FD_CLOEXEC);
  fcntl(*slave_fd, F_SETFD, FD_CLOEXEC);
  return 0;
}

int atelier_set_winsize(int fd, unsigned short rows, unsigned short cols) {
  struct winsize ws = {.ws_row = rows, .ws_col = cols};
  return ioctl(fd, TIOCSWINSZ, &ws);
}

static int inet_socket(void) { return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0); }

int atelier_if_up(const char *ifname) {
  int s = inet_socket();
  if (s < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
  if (rc == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    rc = ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  int err = errno;
  close(s);
  errno = err;
  return rc;
}

int atelier_if_set_ipv4(const char *ifname, const char *address, int prefix_length) {
  int s = inet_socket();
  if (s < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  sin->sin_family = AF_INET;
  int rc = inet_pton(AF_INET, address, &sin->sin_addr) == 1 ? 0 : -1;
  if (rc == 0) rc = ioctl(s, SIOCSIFADDR, &ifr);
  if (rc == 0) {
    uint32_t mask = prefix_length <= 0 ? 0 : htonl(0xffffffffu << (32 - prefix_length));
    sin->sin_addr.s_addr = mask;
    rc = ioctl(s, SIOCSIFNETMASK, &ifr);
  }
  int err = errno;
  close(s);
  errno = err;
  return rc;
}

int atelier_route_add_default(const char *gateway) {
  int s = inet_socket();
  if (s < 0) return -1;
  struct rtentry rt;
  memset(&rt, 0, sizeof(rt));
  struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
  gw->sin_family = AF_INET;
  int rc = inet_pton(AF_INET, gateway, &gw->sin_addr) == 1 ? 0 : -1;
  ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  if (rc == 0) rc = ioctl(s, SIOCADDRT, &rt);
  int err = errno;
  close(s);
  errno = err;
  return rc == 0 || err == EEXIST ? 0 : -1;
}

int atelier_wifexited(int status) { return WIFEXITED(status); }
int atelier_wexitstatus(int status) { return WEXITSTATUS(status); }
int atelier_wifsignaled(int status) { return WIFSIGNALED(status); }
int atelier_wtermsig(int status) { return WTERMSIG(status); }

int atelier_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int atelier_power_off(void) {
  sync();
  return reboot(RB_POWER_OFF);
}

int atelier_add_entropy(const unsigned char *bytes, int count) {
  if (count <= 0 || count > 4096) return -1;
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct rand_pool_info *info = malloc(sizeof(struct rand_pool_info) + (size_t)count);
  if (!info) {
    close(fd);
    return -1;
  }
  info->entropy_count = count * 8;
  info->buf_size = count;
  memcpy(info->buf, bytes, (size_t)count);
  int rc = ioctl(fd, RNDADDENTROPY, info);
  if (rc == 0) rc = ioctl(fd, RNDRESEEDCRNG, 0);
  int err = errno;
  free(info);
  close(fd);
  errno = err;
  return rc;
}

int atelier_set_realtime(long long seconds, long nanoseconds) {
  struct timespec ts = {.tv_sec = (time_t)seconds, .tv_nsec = nanoseconds};
  return clock_settime(CLOCK_REALTIME, &ts);
}

int atelier_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int atelier_if_set_mac(const char *ifname, const char *mac) {
  unsigned int b[6];
  if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
    errno = EINVAL;
    return -1;
  }
  int s = inet_socket();
  if (s < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
  short flags = ifr.ifr_flags;
  if (rc == 0) {
    ifr.ifr_flags = flags & ~IFF_UP;
    rc = ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  if (rc == 0) {
    ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    for (int i = 0; i < 6; i++) ifr.ifr_hwaddr.sa_data[i] = (char)b[i];
    rc = ioctl(s, SIOCSIFHWADDR, &ifr);
  }
  ifr.ifr_flags = flags | IFF_UP;
  int up = ioctl(s, SIOCSIFFLAGS, &ifr);
  int err = errno;
  close(s);
  errno = err;
  return rc == 0 ? up : rc;
}

// A stream socket on AF_VSOCK, bound (listen) or connected to (cid, port); -1 with errno.
static int vsock_socket(unsigned int cid, unsigned int port, int listening) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_vm address;
  memset(&address, 0, sizeof(address));
  address.svm_family = AF_VSOCK;
  address.svm_port = port;
  address.svm_cid = cid;
  int rc = listening
      ? (bind(fd, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(fd, 64) != 0)
      : connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0;
  if (rc) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

int atelier_vsock_listen(unsigned int port) { return vsock_socket(VMADDR_CID_ANY, port, 1); }

int atelier_vsock_connect(unsigned int cid, unsigned int port) {
  return vsock_socket(cid, port, 0);
}

// EXT4_IOC_RESIZE_FS is _IOW('f', 16, __u64); the kernel's ext4 header is not exported.
#define ATELIER_EXT4_IOC_RESIZE_FS _IOW('f', 16, unsigned long long)

int atelier_grow_filesystem(const char *mountpoint, const char *device,
                            unsigned long long *old_bytes, unsigned long long *new_bytes) {
  struct statfs before;
  if (statfs(mountpoint, &before) != 0) return -1;
  int dev = open(device, O_RDONLY | O_CLOEXEC);
  if (dev < 0) return -1;
  unsigned long long device_bytes = 0;
  int rc = ioctl(dev, BLKGETSIZE64, &device_bytes);
  int err = errno;
  close(dev);
  if (rc != 0) { errno = err; return -1; }
  int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  // The new size in file system blocks; equal to the current one, the kernel does nothing.
  unsigned long long blocks = device_bytes / (unsigned long long)before.f_bsize;
  rc = ioctl(fd, ATELIER_EXT4_IOC_RESIZE_FS, &blocks);
  err = errno;
  close(fd);
  if (rc != 0) { errno = err; return -1; }
  struct statfs after;
  if (statfs(mountpoint, &after) != 0) return -1;
  *old_bytes = (unsigned long long)before.f_blocks * before.f_bsize;
  *new_bytes = (unsigned long long)after.f_blocks * after.f_bsize;
  return 0;
}

int atelier_connect_loopback(unsigned short port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in address;
  memset(&address, 0, sizeof(address));
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

void atelier_relay(int a, int b) {
  int open_a = 1, open_b = 1;  // whether each side still sends
  char buffer[65536];
  while (open_a || open_b) {
    struct pollfd fds[2] = {{a, open_a ? POLLIN : 0, 0}, {b, open_b ? POLLIN : 0, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int from = i == 0 ? a : b, to = i == 0 ? b : a;
      ssize_t n = read(from, buffer, sizeof(buffer));
      if (n <= 0) {
        shutdown(to, SHUT_WR);
        if (i == 0) open_a = 0; else open_b = 0;
        continue;
      }
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = write(to, buffer + off, (size_t)(n - off));
        if (w <= 0) {
          if (w < 0 && errno == EINTR) continue;
          open_a = open_b = 0;
          break;
        }
        off += w;
      }
    }
  }
  close(a);
  close(b);
}

long atelier_llistxattr(const char *path, char *list, unsigned long size) {
  return (long)llistxattr(path, list, (size_t)size);
}

long atelier_lgetxattr(const char *path, const char *name, void *value, unsigned long size) {
  return (long)lgetxattr(path, name, value, (size_t)size);
}
