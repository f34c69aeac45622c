"""Layers 2 and 3: OS confinement applied to a freshly forked worker, before any model code runs.

Applied in this order by `confine()` (each step reports success; the parent decides what is fatal):

1. `unshare(CLONE_NEWUSER | CLONE_NEWNET)`: a new network namespace holds only a down loopback,
   so no connection can leave the worker, not even to 127.0.0.1. The new user namespace is what
   lets an unprivileged-in-practice process create it; it also drops every capability the worker
   had in the initial namespace (root's CAP_DAC_OVERRIDE, CAP_KILL, CAP_SYS_ADMIN, ...).
2. rlimits: address space (RLIMIT_AS), CPU seconds, no file growth (RLIMIT_FSIZE = 0), few open
   files, no core dumps. RLIMIT_NPROC is not used: the kernel does not enforce it for root.
3. Landlock (when the kernel has it): read-only access to the Python installation and system
   libraries (so lazy imports of allowed modules work), nothing else on the filesystem; with ABI
   >= 4 no TCP bind/connect; with ABI >= 6 no signals to processes outside the worker and no
   abstract unix sockets.
4. seccomp (libseccomp through `pyseccomp`): refuse socket creation, new processes (fork, vfork,
   execve, clone without CLONE_THREAD; clone3 answers ENOSYS so glibc falls back to clone),
   opening files for writing/creating, filesystem mutation, ptrace, namespaces, mounts, bpf,
   io_uring, signals to other processes. Threads stay possible; they die with the worker on kill.

Not covered: kernel bugs reachable through allowed syscalls, CPU/memory side channels, reading
files inside the allowed read-only paths (the Python installation), and denial of service within
the limits (a snippet may use its whole CPU/memory budget until the wall-clock kill).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The folder holding the deep_math package: the zygote's first sys.path entry (spawner.py).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

# Landlock: syscall numbers are the same on every architecture (generic table).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3

try:  # import before confinement: the binding runs find_library, which needs the filesystem
    import pyseccomp
except (ImportError, RuntimeError, OSError):  # no libseccomp: reported as a missing layer
    pyseccomp = None


@dataclass(frozen=True)
class Layers:
    """Which OS layers a worker actually got (sent to the parent in the worker's hello)."""

    netns: bool = False
    rlimits: bool = False
    landlock_abi: int = 0
    seccomp: bool = False
    errors: tuple[str, ...] = ()

    @property
    def network_blocked(self) -> bool:
        return self.netns or self.seccomp or self.landlock_abi >= 4

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Layers:
        return cls(**{**data, "errors": tuple(data.get("errors", ()))})


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def set_parent_death_signal() -> None:
    """Die with SIGKILL when the parent goes away (set after any uid change, which clears it)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def unshare_network() -> None:
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")


def set_rlimits(memory_mb: int, cpu_seconds: int, max_open_files: int = 64) -> None:
    """Hard limits equal soft limits, so the worker cannot raise them back."""
    mem = memory_mb * 1024 * 1024
    for limit, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_NOFILE, max_open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))


def read_only_paths() -> list[str]:
    """The Python installation, the folders on sys.path (site-packages, PYTHONPATH folders the
    zygote was given) and system libraries: what lazy imports of allowed modules read. This
    package's source root is left out (where it is a checkout, it holds more than code)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(
        v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    paths.update(
        p
        for p in sys.path
        if p and os.path.isabs(p) and os.path.isdir(p) and (p != PACKAGE_ROOT or "site-packages" in p)
    )
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache", "/dev/urandom"))
    return sorted(p for p in paths if os.path.exists(p))


def landlock_abi() -> int:
    ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def apply_landlock(paths: list[str]) -> int:
    """Restrict the filesystem to read-only `paths` (plus network/signal scoping). Returns the ABI."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available")
    fs_bits = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)  # REFER (v2), TRUNCATE (v3), IOCTL_DEV (v5)
    attr = _RulesetAttr(handled_access_fs=(1 << fs_bits) - 1)
    size = 8
    if abi >= 4:
        attr.handled_access_net = 0b11  # BIND_TCP | CONNECT_TCP, no rule allows any port
        size = 16
    if abi >= 6:
        attr.scoped = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL
        size = 24
    ruleset = _check(
        _libc.syscall(
            _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        ),
        "landlock_create_ruleset",
    )
    try:
        for path in paths:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                access = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
                rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
                _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                                     ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule({path})")  # fmt: skip
            finally:
                os.close(fd)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self"
        )
    finally:
        os.close(ruleset)
    return abi


# Syscalls a math snippet never needs. EPERM (not kill) so Python raises a readable OSError.
_DENIED_SYSCALLS = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mknod", "mknodat",
    "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown",
    "truncate", "creat", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "kexec_load",
    "init_module", "finit_module", "delete_module", "name_to_handle_at", "open_by_handle_at",
    "fanotify_init", "quotactl", "swapon", "swapoff", "reboot", "acct", "settimeofday",
    "clock_settime", "sethostname", "setdomainname", "kill", "tkill", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "setrlimit", "prlimit64",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
)  # fmt: skip
_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


def apply_seccomp() -> None:
    """Load the syscall filter (see the module docstring). Irreversible for the process."""
    if pyseccomp is None:
        raise OSError(errno.ENOSYS, "pyseccomp/libseccomp is not available")
    sc = pyseccomp
    eperm = sc.ERRNO(errno.EPERM)
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in _DENIED_SYSCALLS:
        try:
            filt.add_rule(eperm, name)
        except (OSError, ValueError, RuntimeError):  # not on this architecture
            continue
    for flag in _WRITE_FLAGS:
        filt.add_rule(eperm, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        filt.add_rule(eperm, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "openat2")  # flags live in a struct: make libc fall back
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # same: glibc then uses clone(), filtered below
    filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))  # processes, not threads
    # tgkill is how raise()/abort()/pthread_kill signal the worker itself; nobody else.
    filt.add_rule(eperm, "tgkill", sc.Arg(0, sc.NE, os.getpid()))
    filt.load()


def confine(memory_mb: int, cpu_seconds: int) -> Layers:
    """Apply every available layer to the current (single-threaded, freshly forked) process."""
    errors: list[str] = []
    netns = rlimits = seccomp = False
    abi = 0
    try:
        unshare_network()
        netns = True
    except OSError as exc:
        errors.append(str(exc))
    try:
        abi = apply_landlock(read_only_paths())
    except OSError as exc:
        errors.append(f"landlock: {exc}")
    try:
        set_rlimits(memory_mb, cpu_seconds)
        rlimits = True
    except (OSError, ValueError) as exc:
        errors.append(f"rlimits: {exc}")
    try:
        apply_seccomp()
        seccomp = True
    except OSError as exc:
        errors.append(f"seccomp: {exc}")
    return Layers(netns=netns, rlimits=rlimits, landlock_abi=abi, seccomp=seccomp, errors=tuple(errors))
