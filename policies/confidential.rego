# Coffer confidential-mode policy: the default when the sandbox runs in a TEE.
#
# Contract (see the coffer-policies crate docs): input schema version 1, one decision per request in
# data.coffer.policy.decision = {"allow": bool, "reason": string[, "record": {string: string}]}.
#
# The host is untrusted: it sends every request. This policy admits only what the pod owner listed
# in the policy data (schema: policies/POLICY-DATA.md), which arrives with the policy in measured
# initdata:
#   - CreateContainer only from an image pinned by digest and listed, with exactly the listed
#     argv, user, working directory and terminal setting, environment drawn from the listed values,
#     no capabilities beyond the default set plus the listed ones, no_new_privileges unless listed,
#     fresh mount and pid namespaces and no joined namespace unless listed, only the standard kernel
#     filesystems (sysfs and cgroup read-only, without rw/rrw) plus the listed mounts, no devices
#     (nodes or device cgroup rules beyond the standard character devices; never a rule of type
#     `a`, which the runtime reads as every device), sysctls or relaxed masked/read-only paths
#     unless listed, exactly the listed seccomp profile (none unless listed), resource limits
#     within the listed bounds (RLIMIT_NOFILE up to 1048576 unless listed otherwise), no
#     supplementary group but the process's own and the listed ones, exactly the listed AppArmor
#     and SELinux labels (none unless listed), no OOM-killer exemption (oom_score_adj -1000),
#     cgroup limits within the listed ceilings and no raw cgroup setting unless listed, a
#     read-only root filesystem where listed. (OCI hooks never reach the policy: the agent
#     refuses them, and every spec field it does not model, when it decodes the request.) An
#     admitted container is recorded with its entry's name.
#     A process holding CAP_NET_ADMIN or CAP_NET_RAW (in any set; only where its entry lists them)
#     is created and started only while no container has started: the pod's network is set up
#     (the mesh init, istio-init's pattern) before the workload runs and is fixed from then on.
#     Such a container is recorded as `network: set-up`, which StartContainer checks. A container
#     that started counts even after its removal (`state.ever_started`).
#     Sealed environment values (`sealed.kbs:///…`) and sealed files (mounts of type `sealed`),
#     resolved by the agent from the key broker, only for the secrets the entry lists.
#   - Root filesystems uploaded by the host are refused: images are pulled inside the guest.
#     PullImage (a pull ahead of CreateContainer) only for an image pinned by digest and listed.
#   - ExecProcess only for argv listed for the container's entry, compared argument by argument,
#     without a terminal, as the entry's user, and without network capabilities once another
#     container has started.
#   - Reading the init process's stdout/stderr only when the entry allows logs; writing its stdin
#     only when the entry allows stdin.
#   - CreateSandbox: the pod's network (NICs, routes, DNS; the agent validated its form) is the
#     host's to describe, except that the policy data may pin the pod's resolver
#     (`network.dns_servers`, `network.dns_searches`): a DNS server or search domain not listed
#     there is refused.
#   - The pod's resolver and host files (`pod` mounts of `resolv.conf`, `hosts`, `hostname` at
#     `/etc/…`, written by the agent from CreateSandbox) are standard mounts, like `proc /proc`.
# Protocol v1 has no network-mutating or policy-replacing RPC (the network is described once, by
# CreateSandbox, and applied before any container exists; a container without a network
# namespace of its own shares the guest's): only a container with those capabilities can change
# the pod's network afterwards, hence the rule above. Any kind this policy does not know
# (SetPolicy, SetIPTables, ...) is denied. With no policy data every container is refused.
package coffer.policy

import rego.v1

known_kinds := {
	"CreateSandbox",
	"DestroySandbox",
	"UploadRootfs",
	"PullImage",
	"CreateContainer",
	"StartContainer",
	"RemoveContainer",
	"StatsContainer",
	"ExecProcess",
	"WaitProcess",
	"SignalProcess",
	"WriteStdin",
	"CloseStdin",
	"ReadStdout",
	"ReadStderr",
	"TtyWinResize",
	"GetGuestDetails",
	"GetOOMEvent",
}

# containerd's default capabilities for unprivileged containers, without CAP_NET_RAW.
default_capabilities := {
	"CAP_AUDIT_WRITE",
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_MKNOD",
	"CAP_NET_BIND_SERVICE",
	"CAP_SETFCAP",
	"CAP_SETGID",
	"CAP_SETPCAP",
	"CAP_SETUID",
	"CAP_SYS_CHROOT",
}

# Kernel filesystems every container may have, by [type, destination]. Never bind mounts. The
# second set must be mounted read-only.
standard_mounts := {
	"/proc": {"proc"},
	"/dev": {"tmpfs"},
	"/dev/pts": {"devpts"},
	"/dev/shm": {"tmpfs", "shm"},
	"/dev/mqueue": {"mqueue"},
}

read_only_standard_mounts := {
	"/sys": {"sysfs"},
	"/sys/fs/cgroup": {"cgroup", "cgroup2"},
}

# The pod's own files a `pod` mount may name, by [source, destination]: the agent writes them from
# CreateSandbox and binds them read-only (never a guest path the request chooses).
pod_files := {
	["resolv.conf", "/etc/resolv.conf"],
	["hosts", "/etc/hosts"],
	["hostname", "/etc/hostname"],
}

# Resource limits a container may set without its entry listing them, with their ceilings.
default_rlimits := {"RLIMIT_NOFILE": {"soft": 1048576, "hard": 1048576}}

required_masked_paths := {
	"/proc/acpi",
	"/proc/kcore",
	"/proc/keys",
	"/proc/latency_stats",
	"/proc/sched_debug",
	"/proc/scsi",
	"/proc/timer_list",
	"/proc/timer_stats",
	"/sys/firmware",
}

required_readonly_paths := {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

kind := object.get(input, ["request", "kind"], "<missing kind>")

# The members each kind of request always has: the input schema's (policies/src/input.rs), less
# those it lets be absent. The agent's typed input carries them all; hand-written input
# (`Engine::decide_json`) may not, and a check that reads an absent member is undefined, so its
# denial would vanish and the request pass unchecked. A request missing one is denied.
required_members := {
	"CreateSandbox": {"sandbox_id", "hostname"},
	"UploadRootfs": {"container_id"},
	"PullImage": {"container_id", "image"},
	"CreateContainer": {"container_id", "rootfs", "process", "namespaces", "mounts", "devices", "hooks_present", "sysctls", "masked_paths", "readonly_paths"},
	"StartContainer": {"container_id"},
	"RemoveContainer": {"container_id", "force"},
	"StatsContainer": {"container_id"},
	"ExecProcess": {"container_id", "exec_id", "process"},
	"WaitProcess": {"container_id", "exec_id"},
	"SignalProcess": {"container_id", "exec_id", "signal", "all"},
	"WriteStdin": {"container_id", "exec_id"},
	"CloseStdin": {"container_id", "exec_id"},
	"ReadStdout": {"container_id", "exec_id"},
	"ReadStderr": {"container_id", "exec_id"},
	"TtyWinResize": {"container_id", "exec_id"},
}

# The same inside a request: its process (CreateContainer, ExecProcess) and root filesystem.
required_process_members := {"args", "env", "cwd", "user", "terminal", "capabilities", "no_new_privileges"}

missing_members := ({sprintf("request.%s", [m]) |
	some m in object.get(required_members, kind, set())
	not m in object.keys(input.request)
} | {sprintf("request.process.%s", [m]) |
	kind in {"CreateContainer", "ExecProcess"}
	some m in required_process_members
	not m in object.keys(object.get(input.request, "process", {}))
}) | {sprintf("request.rootfs.%s", [m]) |
	kind == "CreateContainer"
	some m in {"source", "image"}
	not m in object.keys(object.get(input.request, "rootfs", {}))
}

# The listed containers, for the load-time data check. (Read as data.containers, never through
# object.get(data, ...): that would materialise the whole data tree, this policy's own rules
# included, on every decision. Decisions read data.containers directly: see below.)
default entries := []

entries := data.containers

# --- decision ---------------------------------------------------------------------------------
#
# Evaluation cost grows with every rule body and rule reference a decision touches, so the decision
# is one else chain: plain kinds are decided by its first body alone, CreateContainer evaluates
# only the CreateContainer checks (against the entries listing its image), and every other kind
# only its own checks (kind_denials). The verdict is an allow only when the denials are defined and
# empty; an undefined part leaves the decision undefined, which the engine denies.
#
# In regorus's interpreter a reference to another rule (even an alias such as `x := input.y`, even
# one already evaluated) or a function call costs about as much as ten field reads or comparisons,
# and a builtin call several. So the checks read `input.request` and `data.containers` directly, a
# check that runs inside a loop avoids rule references and helper functions where it can, and a
# check that does not depend on the entry (which mounts are standard) runs once per request.
# Indexing a call's result directly (`split(s, "=")[0]`) makes regorus build and discard an error
# (with a backtrace under RUST_BACKTRACE=1) each time, so such results go through a local first.

decision := {"allow": true, "reason": ""} if {
	input.version == 1

	# Requests with nothing to check beyond their kind (the agent checks that the container or
	# process exists). A set written here rather than a rule of its own: a rule reference costs
	# a plain request more than the rest of its decision.
	input.request.kind in {
		"DestroySandbox",
		"RemoveContainer",
		"StatsContainer",
		"WaitProcess",
		"SignalProcess",
		"TtyWinResize",
		"GetGuestDetails",
		"GetOOMEvent",
	}
} else := create_decision if {
	input.request.kind == "CreateContainer"
} else := other_decision if {
	kind != "CreateContainer"
}

create_decision := {"allow": false, "reason": concat("; ", sort(create_denials_all))} if {
	count(create_denials_all) > 0
} else := {"allow": true, "reason": "", "record": create_record} if {
	count(create_denials_all) == 0
}

# The admitting entry, and whether the container may change the pod's network (StartContainer
# reads it back: the host could otherwise create such a container early and start it late).
create_record := {"entry": admitted_entry, "network": "set-up"} if {
	count(held_network_capabilities) > 0
} else := {"entry": admitted_entry}

create_denials_all := (create_denials | version_denials) | shape_denials

other_decision := {"allow": false, "reason": concat("; ", sort(other_denials))} if {
	count(other_denials) > 0
} else := {"allow": true, "reason": ""} if {
	count(other_denials) == 0
}

other_denials := (kind_denials(kind) | version_denials) | shape_denials

# --- every request ------------------------------------------------------------------------------

version_denials := {msg |
	not input.version == 1
	msg := sprintf("unsupported policy input version %v, expected 1", [object.get(input, "version", null)])
}

shape_denials := {msg |
	some member in missing_members
	msg := sprintf("%s: the request has no %s (the input schema requires it)", [kind, member])
}

# The checks of each kind other than CreateContainer (a set). One definition per kind, so a check
# that is undefined leaves the decision undefined (denied) instead of falling through to another.
kind_denials("CreateSandbox") := sandbox_denials

kind_denials("PullImage") := pull_denials

kind_denials("ExecProcess") := exec_denials

kind_denials("StartContainer") := start_denials

kind_denials("ReadStdout") := stream_denials("ReadStdout", "logs")

kind_denials("ReadStderr") := stream_denials("ReadStderr", "logs")

kind_denials("WriteStdin") := stream_denials("WriteStdin", "stdin")

kind_denials("CloseStdin") := stream_denials("CloseStdin", "stdin")

kind_denials("UploadRootfs") := {"UploadRootfs: root filesystems from the host are not allowed in confidential mode (images are pulled in the guest)"}

kind_denials(k) := set() if {
	k in known_kinds
	not k in checked_kinds
}

kind_denials(k) := {sprintf("%v is not an RPC this policy allows", [k])} if not k in known_kinds

# The kinds with checks of their own.
checked_kinds := {"CreateSandbox", "PullImage", "CreateContainer", "StartContainer", "ExecProcess", "ReadStdout", "ReadStderr", "WriteStdin", "CloseStdin", "UploadRootfs"}

# Problems with the policy data. The engine evaluates this rule once when it loads the policy and
# refuses to load on any problem, so malformed data is never read leniently.
data_problems contains "containers must be an array" if not is_array(entries)

data_problems contains msg if {
	some i, e in entries
	not is_string(e.name)
	msg := sprintf("containers[%d].name must be a string", [i])
}

data_problems contains msg if {
	some i, e in entries
	not pinned(object.get(e, "image", null))
	msg := sprintf("containers[%d].image must be a reference pinned by digest (…@sha256:<64 hex>)", [i])
}

data_problems contains msg if {
	some i, e in entries
	not string_array(object.get(e, "args", null))
	msg := sprintf("containers[%d].args must be an array of strings", [i])
}

data_problems contains msg if {
	some i, e in entries
	some field in ["env", "env_names_any_value", "capabilities", "host_namespaces", "secrets"]
	not string_array(object.get(e, field, []))
	msg := sprintf("containers[%d].%s must be an array of strings", [i, field])
}

data_problems contains msg if {
	some i, e in entries
	some field in ["mounts", "devices", "exec"]
	not is_array(object.get(e, field, []))
	msg := sprintf("containers[%d].%s must be an array", [i, field])
}

data_problems contains msg if {
	some i, e in entries
	some field in ["terminal", "logs", "stdin", "allow_privilege_escalation", "readonly_rootfs"]
	not is_boolean(object.get(e, field, false))
	msg := sprintf("containers[%d].%s must be a boolean", [i, field])
}

data_problems contains msg if {
	some i, e in entries
	some field in ["apparmor_profile", "selinux_label", "mount_label"]
	value := object.get(e, field, null)
	value != null
	not is_string(value)
	msg := sprintf("containers[%d].%s must be a string", [i, field])
}

data_problems contains msg if {
	some i, e in entries
	gids := object.get(e, "additional_gids", [])
	not number_array(gids)
	msg := sprintf("containers[%d].additional_gids must be an array of numbers", [i])
}

data_problems contains msg if {
	some i, e in entries
	profile := object.get(e, "seccomp", null)
	profile != null
	not seccomp_shape(profile)
	msg := sprintf("containers[%d].seccomp must be a profile {default_action, default_errno_ret, architectures, flags, syscalls} as the input shows it", [i])
}

data_problems contains msg if {
	some i, e in entries
	limits := object.get(e, "rlimits", {})
	not rlimit_bounds(limits)
	msg := sprintf("containers[%d].rlimits must map RLIMIT_… names to {\"soft\": n, \"hard\": n}", [i])
}

data_problems contains msg if {
	some i, e in entries
	r := object.get(e, "resources", {})
	not resource_ceilings(r)
	msg := sprintf("containers[%d].resources may hold memory_limit and pids_limit (numbers) and unified (an object of strings), nothing else", [i])
}

data_problems contains msg if {
	some i, e in entries
	some j, other in entries
	i < j
	e.name == other.name
	msg := sprintf("container name %v is listed twice", [e.name])
}

# The optional `network` pin: an object with `dns_servers` and/or `dns_searches`, arrays of strings.
# A member this policy does not know is a problem rather than no pin, so a misspelt pin never
# silently pins nothing.
data_problems contains "network must be an object" if {
	pin := data.network
	not is_object(pin)
}

data_problems contains msg if {
	is_object(data.network)
	some key, _ in data.network
	not key in {"dns_servers", "dns_searches"}
	msg := sprintf("network.%v is not a member this policy knows (dns_servers, dns_searches)", [key])
}

data_problems contains msg if {
	is_object(data.network)
	some key in ["dns_servers", "dns_searches"]
	value := data.network[key]
	not string_array(value)
	msg := sprintf("network.%s must be an array of strings", [key])
}

pinned(ref) if {
	is_string(ref)
	regex.match(`^[^@ \t\n]+@sha256:[0-9a-f]{64}$`, ref)
}

string_array(value) if {
	is_array(value)
	every v in value {
		is_string(v)
	}
}

number_array(value) if {
	is_array(value)
	every v in value {
		is_number(v)
	}
}

seccomp_shape(p) if {
	is_object(p)
	every k, _ in p {
		k in {"default_action", "default_errno_ret", "architectures", "flags", "syscalls"}
	}
	is_string(p.default_action)
	is_array(p.syscalls)
}

rlimit_bounds(limits) if {
	is_object(limits)
	every name, b in limits {
		startswith(name, "RLIMIT_")
		is_number(b.soft)
		is_number(b.hard)
	}
}

resource_ceilings(r) if {
	is_object(r)
	every k, v in r {
		k in {"memory_limit", "pids_limit", "unified"}
		resource_value(k, v)
	}
}

resource_value(k, v) if {
	k != "unified"
	is_number(v)
}

resource_value("unified", v) if {
	is_object(v)
	every _, x in v {
		is_string(x)
	}
}

# --- CreateSandbox ------------------------------------------------------------------------------
#
# The pod's network comes from the host (it found it in the pod's CNI namespace). Without a pin any
# network the agent validated is allowed; with `network.dns_servers` (`network.dns_searches`) in
# the data, every DNS server (search domain) of the request must be listed there, so the host
# cannot send the pod's name lookups elsewhere. A request without a network (or without DNS)
# names none.
sandbox_denials := {msg |
	listed := data.network.dns_servers
	some server in input.request.network.dns.servers
	not server in listed
	msg := sprintf("CreateSandbox %s: DNS server %s is not listed in the policy data (network.dns_servers)", [input.request.sandbox_id, server])
} | {msg |
	listed := data.network.dns_searches
	some search in input.request.network.dns.searches
	not search in listed
	msg := sprintf("CreateSandbox %s: DNS search domain %s is not listed in the policy data (network.dns_searches)", [input.request.sandbox_id, search])
}

# --- PullImage ----------------------------------------------------------------------------------

pull_denials := {msg |
	not pinned(input.request.image)
	msg := sprintf("PullImage %s: image %v is not pinned by digest", [input.request.container_id, input.request.image])
} | {msg |
	pinned(input.request.image)
	count(candidates) == 0
	msg := sprintf("PullImage %s: image %s is not listed in the policy data", [input.request.container_id, input.request.image])
}

# --- CreateContainer ----------------------------------------------------------------------------

create_denials := {msg |
	input.request.rootfs.source != "image"
	msg := sprintf("CreateContainer %s: root filesystem source %v is not allowed in confidential mode, only pulled images", [input.request.container_id, input.request.rootfs.source])
} | {msg |
	input.request.hooks_present != false
	msg := sprintf("CreateContainer %s: OCI hooks are present (they would run as guest root)", [input.request.container_id])
} | {msg |
	# A listed image is pinned (data_problems checks every entry's image at load), so the digest
	# check (a regular expression, the costliest builtin here) runs only for unlisted images.
	count(candidates) == 0
	input.request.rootfs.source == "image"
	not pinned(input.request.rootfs.image)
	msg := sprintf("CreateContainer %s: image %v is not pinned by digest", [input.request.container_id, input.request.rootfs.image])
} | {msg |
	count(candidates) == 0
	pinned(input.request.rootfs.image)
	msg := sprintf("CreateContainer %s: image %s is not listed in the policy data", [input.request.container_id, input.request.rootfs.image])
} | {msg |
	count(matching) == 0
	some name, problems in screened
	msg := sprintf("CreateContainer %s: policy entry %v: %s", [input.request.container_id, name, concat(", ", sort(problems))])
} | {msg |
	count(held_network_capabilities) > 0
	some id in started_ids
	msg := sprintf("CreateContainer %s: capabilities %s change the pod's network, allowed only before the first container starts (%s started)", [input.request.container_id, concat(", ", sort(held_network_capabilities)), id])
}

# The image a request names: CreateContainer's root filesystem, or what PullImage fetches.
requested_image := input.request.rootfs.image if {
	input.request.kind == "CreateContainer"
} else := input.request.image if {
	input.request.kind == "PullImage"
}

# The entries listing that image (normally one; entry names are unique).
candidates := object.get(data.coffer_index.by_image, requested_image, [])

# Indexes of the policy data (rule indexing): the engine evaluates this rule once, when it loads
# the policy and its data, and every decision reads the result as `data.coffer_index` — a
# decision looks its entries up by image or name instead of scanning all of them.
data_index := {
	"by_image": {image: [e | some e in data.containers; e.image == image] | some x in data.containers; image := x.image},
	"by_name": {e.name: e | some e in data.containers},
}

# Each candidate's problems with the request, by entry name.
screened := {e.name: entry_problems(input.request, e) | some e in candidates}

# The request's mounts that are not standard kernel filesystems: only these need listing. Whether
# a mount is standard does not depend on the entry, so it is decided once per request.
nonstandard_mounts := [m | some m in input.request.mounts; not m in standard_request_mounts]

# The request's mounts that are standard: a kernel filesystem at its place, not a bind mount (by
# type or option), and read-only where it must be — `ro` or `rro` among its options and neither
# `rw` nor `rrw` (the runtime applies them in order, so `ro` followed by `rw` would mount it
# writable); or one of the pod's files at its destination, without options (the agent chooses
# them: read-only). (Comprehensions of membership tests: no call per mount, the costliest thing
# per mount in regorus.)
standard_request_mounts := {m |
	some m in input.request.mounts
	m.type in standard_mounts[m.destination]
	not "bind" in m.options
	not "rbind" in m.options
} | {m |
	some m in input.request.mounts
	m.type in read_only_standard_mounts[m.destination]
	not "rw" in m.options
	not "rrw" in m.options
	not "bind" in m.options
	not "rbind" in m.options
	some o in m.options
	o in {"ro", "rro"}
} | {m |
	some m in input.request.mounts
	m.type == "pod"
	[m.source, m.destination] in pod_files
	count(m.options) == 0
}

# The request's device cgroup rules that allow reading or writing more than the standard character
# devices (which the OCI runtime allows anyway): only these need a listed device. Decided once per
# request.
nonstandard_device_rules := [rule |
	some rule in object.get(input.request, "device_cgroup", [])
	rule.allow == true
	not standard_device_rule(rule)
]

# null, zero, full, random, urandom, tty, console, ptmx, and the pseudo-terminals.
standard_char_devices := {[1, 3], [1, 5], [1, 7], [1, 8], [1, 9], [5, 0], [5, 1], [5, 2]}

standard_device_rule(rule) if {
	rule.type == "c"
	[rule.major, rule.minor] in standard_char_devices
}

standard_device_rule(rule) if {
	rule.type == "c"
	rule.major == 136
}

# A rule granting neither read nor write (`m`: mknod alone) opens no device. Not for type `a`:
# the runtime reads any allow rule of type `a` as "every device, every access".
standard_device_rule(rule) if {
	rule.type != "a"
	is_string(rule.access)
	not contains(rule.access, "r")
	not contains(rule.access, "w")
}

matching := {name | some name, problems in screened; count(problems) == 0}

# Deterministic when several entries admit the same request.
admitted_entry := names[0] if names := sort(matching)

# --- network set-up ------------------------------------------------------------------------------
#
# The only way to change the pod's network (protocol v1 has no network RPC) is a process with one
# of these capabilities. Such a container (its entry must list them, above) runs only during
# set-up: created and started while no container of the sandbox has started.
network_capabilities := {"CAP_NET_ADMIN", "CAP_NET_RAW"}

# The network capabilities a CreateContainer's process holds, in any of its sets. Looked for only
# when an entry listing the request's image allows one of them: otherwise holding one is already a
# capability problem, and the common request (no entry allows them) skips the walk over its sets.
held_network_capabilities := {cap |
	count({c | some e in candidates; some c in object.get(e, "capabilities", []); c in network_capabilities}) > 0
	some caps in input.request.process.capabilities
	some cap in caps
	cap in network_capabilities
}

# Every container this sandbox has started: those still there, and the ones the agent remembers
# starting (`state.ever_started`), so removing the started containers does not reopen set-up.
started_ids := {c.id | some c in input.state.containers; c.started == true} | {id | some id in object.get(input.state, "ever_started", [])}

start_denials := {msg |
	some c in input.state.containers
	c.id == input.request.container_id
	object.get(c.record, "network", null) == "set-up"
	some other in started_ids
	other != input.request.container_id
	msg := sprintf("StartContainer %s: it holds capabilities that change the pod's network, allowed only before the first container starts (%s started)", [input.request.container_id, other])
}

# Everything about a CreateContainer request `r` that its entry `e` does not allow (a set).
entry_problems(r, e) := (((({msg |
	r.process.args != e.args
	msg := sprintf("args %v differ from %v", [r.process.args, e.args])
} | process_problems(r.process, e)) | {msg |
	some ns in r.namespaces
	ns.path != null
	not ns.type in object.get(e, "host_namespaces", [])
	msg := sprintf("%s namespace joins the existing namespace %v", [ns.type, ns.path])
} | {msg |
	some required in ["mount", "pid"]
	not required in {ns.type | some ns in r.namespaces}
	not required in object.get(e, "host_namespaces", [])
	msg := sprintf("no new %s namespace (the guest's own would be shared)", [required])
}) | ({msg |
	some m in nonstandard_mounts
	not m in object.get(e, "mounts", [])
	msg := sprintf("mount %s (type %v, source %v) is not allowed", [m.destination, m.type, m.source])
} | {msg |
	# A sealed file (`{"type": "sealed", "source": "kbs:///…", "destination": …}`, resolved by
	# the agent from the key broker) must be listed exactly among the entry's mounts (above),
	# which pins where the secret lands, and name a secret the entry lists.
	some m in r.mounts
	m.type == "sealed"
	not m.source in object.get(e, "secrets", [])
	msg := sprintf("mount %s names secret %v, which its entry does not list", [m.destination, m.source])
} | {msg |
	# The listed device with this path, type and numbers (and mode and owner, where listed).
	some d in r.devices
	count({1 |
		some ed in object.get(e, "devices", [])
		ed.path == d.path
		ed.type == d.type
		ed.major == d.major
		ed.minor == d.minor
		object.get(ed, "file_mode", d.file_mode) == d.file_mode
		object.get(ed, "uid", d.uid) == d.uid
		object.get(ed, "gid", d.gid) == d.gid
	}) == 0
	msg := sprintf("device %s is not listed", [d.path])
} | {msg |
	some rule in nonstandard_device_rules
	rule.type == "a"
	msg := "device cgroup rule of type a allows every device"
} | {msg |
	# A device cgroup rule allowing more than the standard devices (a privileged container's
	# "allow all", say) must name one of the entry's devices exactly.
	some rule in nonstandard_device_rules
	count({1 | some d in object.get(e, "devices", []); d.type == rule.type; d.major == rule.major; d.minor == rule.minor}) == 0
	msg := sprintf("device cgroup rule allows %s %v:%v (%s), which is not a listed device", [rule.type, rule.major, rule.minor, rule.access])
} | {msg |
	some key, value in r.sysctls
	object.get(object.get(e, "sysctls", {}), key, null) != value
	msg := sprintf("sysctl %s=%s is not listed", [key, value])
})) | (({msg |
	# The seccomp profile the entry lists, exactly (none when it lists none).
	r.seccomp != object.get(e, "seccomp", null)
	msg := sprintf("seccomp profile %s differs from the entry's %s", [seccomp_summary(r.seccomp), seccomp_summary(object.get(e, "seccomp", null))])
} | {msg |
	r.mount_label != object.get(e, "mount_label", null)
	msg := sprintf("mount label %v differs from %v", [r.mount_label, object.get(e, "mount_label", null)])
} | {msg |
	object.get(e, "readonly_rootfs", false) == true
	r.root_readonly != true
	msg := "the root filesystem is not read-only"
}) | resource_problems(r, e)) | ({msg |
	missing := required_masked_paths - {p | some p in r.masked_paths}
	count(missing) > 0
	msg := sprintf("masked paths %v are not masked", [sort(missing)])
} | {msg |
	missing := required_readonly_paths - {p | some p in r.readonly_paths}
	count(missing) > 0
	msg := sprintf("paths %v are not read-only", [sort(missing)])
})) | {msg |
	r.process.terminal != object.get(e, "terminal", false)
	msg := sprintf("terminal %v differs from %v", [r.process.terminal, object.get(e, "terminal", false)])
}

# Problems of a process against an entry (shared by CreateContainer and ExecProcess). (Each check
# is a comprehension here rather than a helper function: a call costs more than the check.)
process_problems(p, e) := ((({sprintf("user %v differs from %v", [{"uid": p.user.uid, "gid": p.user.gid}, expected]) |
	expected := object.get(e, "user", {"uid": 0, "gid": 0})
	{"uid": p.user.uid, "gid": p.user.gid} != expected
} | {sprintf("working directory %v differs from %v", [p.cwd, expected]) |
	expected := object.get(e, "cwd", "/")
	p.cwd != expected
}) | ({"no_new_privileges is off" |
	p.no_new_privileges != true
	object.get(e, "allow_privilege_escalation", false) != true
} | capability_problems(p, e))) | (env_problems(p, e) | sealed_problems(p, e))) | hardening_problems(p, e)

# Resource limits, supplementary groups, LSM labels and the OOM score of a process against an
# entry (CreateContainer and ExecProcess).
hardening_problems(p, e) := (({msg |
	some rl in p.rlimits
	bound := object.get(object.get(e, "rlimits", {}), rl.type, object.get(default_rlimits, rl.type, null))
	not rlimit_within(rl, bound)
	msg := rlimit_problem(rl, bound)
} | {sprintf("supplementary group %v is not listed", [g]) |
	some g in p.user.additional_gids
	g != p.user.gid
	not g in object.get(e, "additional_gids", [])
}) | ({sprintf("AppArmor profile %v differs from %v", [p.apparmor_profile, expected]) |
	expected := object.get(e, "apparmor_profile", null)
	p.apparmor_profile != expected
} | {sprintf("SELinux label %v differs from %v", [p.selinux_label, expected]) |
	expected := object.get(e, "selinux_label", null)
	p.selinux_label != expected
})) | {"oom_score_adj -1000 exempts it from the OOM killer" |
	p.oom_score_adj == -1000
}

rlimit_problem(rl, null) := sprintf("rlimit %s is not listed", [rl.type])

rlimit_problem(rl, bound) := sprintf("rlimit %s (soft %v, hard %v) is above its bound (soft %v, hard %v)", [rl.type, rl.soft, rl.hard, bound.soft, bound.hard]) if bound != null

rlimit_within(rl, bound) if {
	is_object(bound)
	rl.soft <= bound.soft
	rl.hard <= bound.hard
}

# The entry's cgroup ceilings: a listed memory or pids limit must be set, and at most the listed
# value; raw cgroup settings (`unified`) only as listed, exactly.
resource_problems(r, e) := ({sprintf("memory limit %v is not within the entry's %v", [r.resources.memory.limit, ceiling]) |
	ceiling := e.resources.memory_limit
	not limit_within(r.resources.memory.limit, ceiling)
} | {sprintf("pids limit %v is not within the entry's %v", [r.resources.pids_limit, ceiling]) |
	ceiling := e.resources.pids_limit
	not limit_within(r.resources.pids_limit, ceiling)
}) | {sprintf("cgroup setting %s=%s is not listed", [key, value]) |
	some key, value in r.resources.unified
	object.get(object.get(object.get(e, "resources", {}), "unified", {}), key, null) != value
}

limit_within(limit, ceiling) if {
	is_number(limit)
	limit >= 0
	limit <= ceiling
}

seccomp_summary(null) := "none"

seccomp_summary(p) := sprintf("(default %s, %d rules)", [p.default_action, count(p.syscalls)]) if p != null

capability_problems(p, e) := {sprintf("capability %s (%s set) is not allowed", [cap, set_name]) |
	allowed := default_capabilities | {c | some c in object.get(e, "capabilities", [])}
	some set_name, caps in p.capabilities
	some cap in caps
	not cap in allowed
}

env_problems(p, e) := {sprintf("environment variable %v is not listed", [name]) |
	listed := {v | some v in object.get(e, "env", [])}
	some var in p.env
	not var in listed
	not env_allowed(var, e)
	parts := split(var, "=")
	name := parts[0]
}

# A sealed value (`NAME=sealed.kbs:///repo/type/tag`) is resolved by the agent from the key broker
# after this decision; a container may name only the secrets its entry lists, whatever its
# environment rules otherwise allow.
sealed_problems(p, e) := {sprintf("environment variable %v names secret %v, which its entry does not list", [name, ref]) |
	some var in p.env
	contains(var, "=sealed.") # cheap filter; the exact test is the startswith below
	parts := split(var, "=")
	name := parts[0]
	value := substring(var, count(name) + 1, -1)
	startswith(value, "sealed.")
	ref := substring(value, count("sealed."), -1)
	not ref in object.get(e, "secrets", [])
}

env_allowed(var, e) if var in object.get(e, "env", [])

env_allowed(var, e) if {
	contains(var, "=")
	parts := split(var, "=")
	parts[0] in object.get(e, "env_names_any_value", [])
}

# --- requests about an existing container -------------------------------------------------------

# The policy entry that admitted a container, via the record its CreateContainer left.
entry_of(container_id) := e if {
	some c in input.state.containers
	c.id == container_id
	e := data.coffer_index.by_name[c.record.entry]
}

# The entry of the container an ExecProcess names (undefined if none admitted it).
exec_entry := entry_of(input.request.container_id)

exec_denials := {msg |
	not exec_entry
	msg := sprintf("ExecProcess %s: container %s was not admitted by a policy entry", [input.request.exec_id, input.request.container_id])
} | {msg |
	e := exec_entry
	not input.request.process.args in object.get(e, "exec", [])
	msg := sprintf("ExecProcess %s: argv %v is not listed for policy entry %v", [input.request.exec_id, input.request.process.args, e.name])
} | {msg |
	input.request.process.terminal != false
	msg := sprintf("ExecProcess %s: a terminal is not allowed", [input.request.exec_id])
} | {msg |
	e := exec_entry
	some problem in process_problems(input.request.process, e)
	msg := sprintf("ExecProcess %s: %s", [input.request.exec_id, problem])
} | {msg |
	# Network set-up (above) holds for exec'd processes too: once another container has started,
	# no process may gain the capabilities that change the pod's network.
	some caps in input.request.process.capabilities
	some cap in caps
	cap in network_capabilities
	some id in started_ids
	id != input.request.container_id
	msg := sprintf("ExecProcess %s: capability %s changes the pod's network, allowed only before the first container starts (%s started)", [input.request.exec_id, cap, id])
}

output_kinds := {"ReadStdout", "ReadStderr"}

input_kinds := {"WriteStdin", "CloseStdin"}

# Reading the init process's output needs the entry's `logs`, writing its input the entry's
# `stdin`; an exec'd process's streams follow from its ExecProcess having been allowed.
stream_denials(k, "logs") := {msg |
	input.request.exec_id == null
	not object.get(entry_of(input.request.container_id), "logs", false) == true
	msg := sprintf("%s: output of container %s is not readable (its policy entry does not allow logs)", [k, input.request.container_id])
}

stream_denials(k, "stdin") := {msg |
	input.request.exec_id == null
	not object.get(entry_of(input.request.container_id), "stdin", false) == true
	msg := sprintf("%s: stdin of container %s is not writable (its policy entry does not allow stdin)", [k, input.request.container_id])
}
