"""Our default seccomp profile: an allow-list by purpose; everything else fails with EPERM.

Containers are hostile, and the kernel's system-call surface is the way out of them that
namespaces and capabilities do not close. The profile therefore names what ordinary
programs need (files, memory, processes, signals, time, sockets, SysV IPC) and lets the
default action refuse the rest:

* interfaces whose state is not namespaced, so a container would act on the whole host
  (keyrings, kernel modules, swap, the clock, kexec, accounting, quotas);
* interfaces that let a process build new privilege (user namespaces through ``clone``
  and ``unshare``, mounts, ``setns``, ``pivot_root``) or reach host objects
  (``open_by_handle_at``, the "shocker" escape);
* large attack surfaces with a record of kernel exploits and little use in containers
  (``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring``, ``keyctl``,
  exotic socket families);
* obsolete or unimplemented calls nobody needs (``uselib``, ``_sysctl``, ``vm86``, ...).

Some calls are privileged operations the kernel already ties to a capability; those are
allowed exactly when the container's bounding set holds that capability, so an operator who
grants e.g. CAP_SYS_TIME gets a working ``settimeofday``. Without the capability the
kernel would refuse them anyway, and the filter keeps the code behind them out of reach.

Docker's default profile is the reference for what to allow and refuse; the structure and
the list are ours (docs/HARDENING.md explains the decisions). runc turns the
profile into a BPF filter: names libseccomp does not know are skipped, and because the
default action is an error, runc makes every syscall numbered above the highest one named
here return ENOSYS, so newer calls look "not implemented" and libc falls back.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Final

import msgspec


class LinuxSeccompArg(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One condition on a syscall argument; ``value_two`` is the mask for SCMP_CMP_MASKED_EQ."""

    index: int
    # Always emitted: a condition against 0 must say so explicitly.
    value: int
    value_two: int = msgspec.field(default=0, name="valueTwo")
    op: str


class LinuxSyscall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A seccomp rule: ``action`` for ``names`` when every condition in ``args`` holds."""

    names: list[str]
    action: str
    errno_ret: int | None = msgspec.field(default=None, name="errnoRet")
    args: list[LinuxSeccompArg] = msgspec.field(default_factory=list)


class LinuxSeccomp(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A seccomp filter (runtime-spec 1.1 ``linux.seccomp``).

    Every field runtime-spec 1.1 defines is modelled, so a spec written by another tool
    survives a decode/encode round trip unchanged. runc 1.1 refuses any ``flags``.
    """

    default_action: str = msgspec.field(name="defaultAction")
    default_errno_ret: int | None = msgspec.field(default=None, name="defaultErrnoRet")
    architectures: list[str] = msgspec.field(default_factory=list)
    flags: list[str] = msgspec.field(default_factory=list)
    listener_path: str | None = msgspec.field(default=None, name="listenerPath")
    listener_metadata: str | None = msgspec.field(default=None, name="listenerMetadata")
    syscalls: list[LinuxSyscall] = msgspec.field(default_factory=list)


if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ALWAYS_DENIED_SYSCALLS",
    "CAPABILITY_GATED_SYSCALLS",
    "default_seccomp_profile",
]

EPERM: Final = 1
ENOSYS: Final = 38

# Namespace flags of clone(2)/unshare(2) (linux/sched.h). CLONE_NEWTIME fits in the low
# byte, which clone(2) uses for the exit signal, so it only means "new time namespace" to
# unshare(2) (and clone3, which is refused as a whole).
CLONE_NEWTIME: Final = 0x00000080
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NAMESPACE_FLAGS: Final = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# personality(2) values (linux/personality.h) that only change what uname reports or
# select the 32-bit ABI. Others turn off ASLR (ADDR_NO_RANDOMIZE) or make data
# executable (READ_IMPLIES_EXEC), which only helps an exploit.
PER_LINUX: Final = 0x0000
PER_LINUX32: Final = 0x0008
UNAME26: Final = 0x0020000
PERSONALITY_QUERY: Final = 0xFFFFFFFF
_SAFE_PERSONALITIES: Final = (
    PER_LINUX,
    PER_LINUX32,
    UNAME26,
    UNAME26 | PER_LINUX32,
    PERSONALITY_QUERY,
)

# Socket families (linux/socket.h) a container has a use for. Everything else (AF_ALG,
# AF_VSOCK to the hypervisor, and the old protocol families whose kernel modules load on
# first use: X.25, AX.25, AppleTalk, RDS, TIPC, ...) is where socket-layer exploits live.
# AF_PACKET still needs CAP_NET_RAW, checked by the kernel.
AF_UNIX: Final = 1
AF_INET: Final = 2
AF_INET6: Final = 10
AF_NETLINK: Final = 16
AF_PACKET: Final = 17
_SOCKET_FAMILIES: Final = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET)

# Kernels before 4.8 checked seccomp before ptrace could rewrite a syscall, so a tracer
# could turn an allowed call into a forbidden one.
_PTRACE_SAFE_KERNEL: Final = (4, 8)


class _Group(msgspec.Struct, frozen=True):
    """Syscalls that share one reason to be allowed or refused (``why``)."""

    why: str
    # Whitespace-separated, so the tables stay compact and easy to diff.
    text: str
    # Allowed only when the container's bounding set holds this capability.
    capability: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.text.split())


# --- allowed for every container ---------------------------------------------------------
#
# Names cover every architecture we list (x86_64, i386, x32, aarch64, arm, ...): libseccomp
# resolves each name per architecture and ignores the ones an architecture lacks.

_ALLOWED: Final = (
    _Group(
        "read and write open files, and wait on many of them",
        """
            read write readv writev pread64 pwrite64 preadv preadv2 pwritev pwritev2 lseek _llseek
            close close_range dup dup2 dup3 fcntl fcntl64 ioctl flock fsync fdatasync sync syncfs
            sync_file_range sync_file_range2 arm_sync_file_range fallocate truncate truncate64
            ftruncate ftruncate64 sendfile sendfile64 splice tee vmsplice copy_file_range
            readahead fadvise64 fadvise64_64 arm_fadvise64_64 pipe pipe2 select _newselect
            pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create epoll_create1 epoll_ctl
            epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2
            signalfd signalfd4 timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime
            timerfd_gettime64 inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
            fanotify_mark io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
            io_pgetevents_time64
            """,
    ),
    _Group(
        "open, inspect and change files and directories (the kernel checks permissions)",
        """
            open openat openat2 creat stat fstat lstat stat64 fstat64 lstat64 newfstatat fstatat64
            statx statfs fstatfs statfs64 fstatfs64 access faccessat faccessat2 readlink
            readlinkat getdents getdents64 getcwd chdir fchdir umask utime utimes utimensat
            utimensat_time64 futimesat chmod fchmod fchmodat fchmodat2 chown fchown lchown
            fchownat chown32 fchown32 lchown32 getxattr lgetxattr fgetxattr listxattr llistxattr
            flistxattr setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr mkdir
            mkdirat rmdir rename renameat renameat2 link linkat symlink symlinkat unlink unlinkat
            mknod mknodat
            """,
    ),
    _Group(
        "manage the process's own memory",
        """
            brk mmap mmap2 munmap mremap mprotect madvise mincore mlock mlock2 munlock mlockall
            munlockall msync remap_file_pages membarrier memfd_create pkey_alloc pkey_free
            pkey_mprotect
            """,
    ),
    _Group(
        "start, run, wait for and end processes and threads (clone is filtered below)",
        """
            fork vfork execve execveat exit exit_group wait4 waitid waitpid getpid getppid gettid
            getpgid getpgrp setpgid getsid setsid set_tid_address set_robust_list get_robust_list
            futex futex_time64 futex_waitv rseq restart_syscall arch_prctl set_thread_area
            get_thread_area set_tls cacheflush breakpoint prctl seccomp capget capset pidfd_open
            landlock_create_ruleset landlock_add_rule landlock_restrict_self
            """,
    ),
    _Group(
        "scheduling and limits of the process itself (raising them needs capabilities)",
        """
            getpriority setpriority nice sched_yield sched_getparam sched_setparam
            sched_getscheduler sched_setscheduler sched_getattr sched_setattr sched_getaffinity
            sched_setaffinity sched_get_priority_max sched_get_priority_min sched_rr_get_interval
            sched_rr_get_interval_time64 ioprio_get ioprio_set getrlimit setrlimit ugetrlimit
            prlimit64 getrusage times getcpu
            """,
    ),
    _Group(
        "user and group ids (changing them needs CAP_SETUID/CAP_SETGID)",
        """
            getuid geteuid getgid getegid getresuid getresgid getgroups getuid32 geteuid32
            getgid32 getegid32 getresuid32 getresgid32 getgroups32 setuid setgid setreuid setregid
            setresuid setresgid setfsuid setfsgid setgroups setuid32 setgid32 setreuid32
            setregid32 setresuid32 setresgid32 setfsuid32 setfsgid32 setgroups32
            """,
    ),
    _Group(
        "signals (delivery is confined to the pid namespace)",
        """
            kill tkill tgkill pidfd_send_signal rt_sigaction rt_sigprocmask rt_sigpending
            rt_sigsuspend rt_sigreturn rt_sigqueueinfo rt_tgsigqueueinfo rt_sigtimedwait
            rt_sigtimedwait_time64 sigaltstack sigaction sigprocmask sigpending sigsuspend
            sigreturn signal pause
            """,
    ),
    _Group(
        "read clocks, sleep and set timers (setting the clock is gated below)",
        """
            time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
            clock_nanosleep clock_nanosleep_time64 nanosleep alarm getitimer setitimer
            timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
            timer_settime64
            """,
    ),
    _Group(
        # i386 multiplexes the socket calls through socketcall, whose arguments are in
        # memory, out of a filter's reach; 32-bit glibc still uses it.
        "sockets (socket itself is filtered by family below); the network is namespaced",
        """
            socketpair bind connect listen accept accept4 getsockname getpeername setsockopt
            getsockopt sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64 shutdown
            socketcall
            """,
    ),
    _Group(
        "System V IPC and POSIX message queues (both live in the ipc namespace)",
        """
            msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget
            shmat shmdt shmctl ipc mq_open mq_unlink mq_timedsend mq_timedsend_time64
            mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr
            """,
    ),
    _Group(
        "system information (uname reads the container's own uts namespace)",
        "uname olduname oldolduname sysinfo getrandom",
    ),
)

# --- allowed only with a capability -------------------------------------------------------
#
# The kernel refuses these without the capability; with it, they act on state that no
# namespace isolates (or, for CAP_SYS_ADMIN, on almost anything). Granting the capability
# is the operator's decision, and then the filter should not contradict it.

_GATED: Final = (
    _Group(
        "mounts, namespaces, and the rest of what CAP_SYS_ADMIN allows; clone, clone3 and "
        "unshare become unconditional too (see _namespace_rules)",
        """
        mount umount umount2 fsopen fsconfig fsmount fspick open_tree move_mount mount_setattr
        setns sethostname setdomainname quotactl quotactl_fd fanotify_init lookup_dcookie bpf
        perf_event_open syslog
        """,
        "CAP_SYS_ADMIN",
    ),
    _Group("load BPF programs", "bpf", "CAP_BPF"),
    _Group(
        "performance monitoring, which sees other processes' behaviour",
        "perf_event_open",
        "CAP_PERFMON",
    ),
    _Group("read and clear the host's kernel log", "syslog", "CAP_SYSLOG"),
    _Group(
        "open any inode of a mounted filesystem by handle (the 'shocker' escape)",
        "open_by_handle_at",
        "CAP_DAC_READ_SEARCH",
    ),
    _Group(
        "inspect and control other processes",
        "kcmp pidfd_getfd process_madvise ptrace process_vm_readv process_vm_writev",
        "CAP_SYS_PTRACE",
    ),
    _Group(
        "load and unload kernel modules", "init_module finit_module delete_module", "CAP_SYS_MODULE"
    ),
    _Group("reboot (in a pid namespace: end its init)", "reboot", "CAP_SYS_BOOT"),
    _Group("change the root directory", "chroot", "CAP_SYS_CHROOT"),
    _Group("process accounting to a file, host-wide", "acct", "CAP_SYS_PACCT"),
    _Group("raw I/O port access", "iopl ioperm", "CAP_SYS_RAWIO"),
    _Group(
        "change the clock, which is the host's (there is no time namespace here)",
        "settimeofday stime clock_settime clock_settime64 adjtimex clock_adjtime clock_adjtime64",
        "CAP_SYS_TIME",
    ),
    _Group("hang up the terminal", "vhangup", "CAP_SYS_TTY_CONFIG"),
    _Group("NUMA memory placement", "get_mempolicy mbind set_mempolicy", "CAP_SYS_NICE"),
)

#: Capability -> the syscalls allowed only when the bounding set holds it.
CAPABILITY_GATED_SYSCALLS: Final = {
    cap: tuple(sorted({n for g in _GATED if g.capability == cap for n in g.names}))
    for cap in dict.fromkeys(g.capability for g in _GATED if g.capability is not None)
}

# --- never allowed --------------------------------------------------------------------------
#
# Not emitted as rules (the default action refuses them); listed so tests and readers can
# see each decision and its reason.

_DENIED: Final = (
    _Group(
        "kernel keyrings are not namespaced: one container could read or fill another's",
        "keyctl add_key request_key",
    ),
    _Group("replace the running kernel", "kexec_load kexec_file_load"),
    _Group("host swap, host-wide by nature", "swapon swapoff"),
    _Group("move the root away from what the runtime set up", "pivot_root"),
    _Group(
        "a favourite tool for winning kernel races; unprivileged use is rarely legitimate",
        "userfaultfd",
    ),
    _Group(
        "a large, fast-moving attack surface (Docker refuses it since 25.0)",
        "io_uring_setup io_uring_enter io_uring_register",
    ),
    _Group(
        "move other processes' pages between NUMA nodes",
        "migrate_pages move_pages set_mempolicy_home_node",
    ),
    _Group(
        "handles are only useful to open_by_handle_at, and they reveal mount ids",
        "name_to_handle_at",
    ),
    _Group("reap another process's memory", "process_mrelease"),
    _Group("new and rarely used; hides memory even from the kernel", "memfd_secret"),
    _Group(
        "16-bit segments and virtual 8086 mode: only old DOS and Wine code wants them",
        "modify_ldt vm86 vm86old",
    ),
    _Group(
        "obsolete: superseded long ago and unused by current libcs",
        """
        _sysctl sysfs ustat uselib nfsservctl create_module get_kernel_syms query_module bdflush
        idle oldstat oldfstat oldlstat readdir sgetmask ssetmask
        """,
    ),
    _Group(
        "reserved numbers the kernel never implemented",
        """
        afs_syscall getpmsg putpmsg security tuxcall vserver break ftime gtty stty lock mpx prof
        profil ulimit
        """,
    ),
)

#: Syscalls no container gets, whatever its capabilities.
ALWAYS_DENIED_SYSCALLS: Final = frozenset(n for g in _DENIED for n in g.names)

# Native architecture (uname -m) -> the filter's architectures: the native one plus the
# compat ABIs its kernel can also run, so a 32-bit binary cannot dodge the filter.
_ARCHITECTURES: Final[dict[str, tuple[str, ...]]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "i686": ("SCMP_ARCH_X86",),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}


def _kernel_version() -> tuple[int, int]:
    major, _, rest = os.uname().release.partition(".")
    minor = "".join(c for c in rest.partition(".")[0] if c.isdigit())
    return int(major), int(minor or 0)


def _allow(names: Iterable[str], *args: LinuxSeccompArg) -> LinuxSyscall:
    return LinuxSyscall(names=sorted(names), action="SCMP_ACT_ALLOW", args=list(args))


def _arg(index: int, op: str, value: int, value_two: int = 0) -> LinuxSeccompArg:
    return LinuxSeccompArg(index=index, value=value, value_two=value_two, op=op)


def _namespace_rules(sys_admin: bool, flags_index: int) -> list[LinuxSyscall]:
    """clone, clone3 and unshare: creating namespaces (above all a user namespace, where
    the caller becomes root and reaches kernel code written for real root) needs
    CAP_SYS_ADMIN."""
    if sys_admin:
        return [_allow(["clone", "clone3", "unshare"])]
    return [
        # Threads and fork still work: only the namespace bits must be clear.
        _allow(["clone"], _arg(flags_index, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0)),
        _allow(
            ["unshare"],
            _arg(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME, 0),
        ),
        # clone3 passes its flags in memory, which a filter cannot read. ENOSYS (not
        # EPERM) makes glibc fall back to clone, which is filtered.
        LinuxSyscall(names=["clone3"], action="SCMP_ACT_ERRNO", errno_ret=ENOSYS),
    ]


def default_seccomp_profile(
    capabilities: Iterable[str] = (),
    *,
    machine: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> LinuxSeccomp:
    """Build our default seccomp profile for a container.

    Args:
        capabilities: The container's bounding set; calls the kernel ties to one of these
            capabilities are allowed (see ``CAPABILITY_GATED_SYSCALLS``).
        machine: Native architecture as ``uname -m`` prints it; defaults to this host's.
            An unknown one yields no ``architectures`` (runc then filters the native ABI
            only).
        kernel: ``(major, minor)``; defaults to the running kernel. Before 4.8, ptrace
            could bypass seccomp, so ptrace is then allowed only with CAP_SYS_PTRACE.

    Returns:
        A deny-by-default profile: denied calls fail with EPERM, unknown newer calls with
        ENOSYS (runc adds that), ``clone3`` with ENOSYS.
    """
    caps = frozenset(capabilities)
    arch = machine if machine is not None else platform.machine()
    allowed: set[str] = {name for group in _ALLOWED for name in group.names}
    for group in _GATED:
        if group.capability in caps:
            allowed.update(group.names)
    # Since 4.8 the kernel re-checks seccomp after a tracer changes a syscall, and without
    # CAP_SYS_PTRACE a process can only trace its own uid's processes in its own pid
    # namespace, which is what debuggers and strace inside a container need.
    if (kernel if kernel is not None else _kernel_version()) >= _PTRACE_SAFE_KERNEL:
        allowed.update(("ptrace", "process_vm_readv", "process_vm_writev"))
    sys_admin = "CAP_SYS_ADMIN" in caps
    # s390 swapped the first two clone arguments.
    flags_index = 1 if arch.startswith("s390") else 0
    syscalls = [
        _allow(allowed),
        *_namespace_rules(sys_admin, flags_index),
        # Several conditions on one argument become separate rules in runc (OR), so each
        # permitted value gets its own rule.
        *(_allow(["personality"], _arg(0, "SCMP_CMP_EQ", v)) for v in _SAFE_PERSONALITIES),
        *(_allow(["socket"], _arg(0, "SCMP_CMP_EQ", f)) for f in _SOCKET_FAMILIES),
    ]
    return LinuxSeccomp(
        default_action="SCMP_ACT_ERRNO",
        default_errno_ret=EPERM,
        architectures=list(_ARCHITECTURES.get(arch, ())),
        syscalls=syscalls,
    )
