/* SPDX-License-Identifier: Apache-2.0
 * The cgroup id of the current task, as the softirq and reclaim families record it
 * (bcc-only; inlined by the loader like common.bcc.h).
 *
 * KN_CGROUP_MODE 0: bpf_get_current_cgroup_id(), the cgroup v2 (default hierarchy)
 * id. KN_CGROUP_MODE 1: the id of the task's cgroup in the hierarchy of subsystem
 * KN_CGROUP_SUBSYS (the memory controller on a hybrid v1/v2 machine, where the v2
 * id is the root for everyone): task->cgroups->subsys[KN_CGROUP_SUBSYS]->cgroup->kn->id,
 * every offset from BTF (-D KN_OFF_TASK_CGROUPS, ...; probes/softirq.py and
 * kernel/cgroups.py decide). Either way the id is the inode number of the cgroup's
 * directory, which kernel/cgroups.py maps back to a path.
 */
#ifndef KN_CGROUP_BCC_H
#define KN_CGROUP_BCC_H

#ifndef KN_CGROUP_MODE
#define KN_CGROUP_MODE 0
#endif

static __always_inline u64 kn_current_cgroup(void)
{
#if KN_CGROUP_MODE == 1
	void *task = (void *)bpf_get_current_task();
	void *cset = NULL, *css = NULL, *cgrp = NULL, *kn = NULL;
	u64 id = 0;
	bpf_probe_read_kernel(&cset, sizeof(cset), task + KN_OFF_TASK_CGROUPS);
	if (!cset)
		return 0;
	bpf_probe_read_kernel(&css, sizeof(css), cset + KN_OFF_CSET_SUBSYS + 8 * KN_CGROUP_SUBSYS);
	if (!css)
		return 0;
	bpf_probe_read_kernel(&cgrp, sizeof(cgrp), css + KN_OFF_CSS_CGROUP);
	if (!cgrp)
		return 0;
	bpf_probe_read_kernel(&kn, sizeof(kn), cgrp + KN_OFF_CGROUP_KN);
	if (!kn)
		return 0;
	bpf_probe_read_kernel(&id, sizeof(id), kn + KN_OFF_KN_ID);
	return id;
#else
	return bpf_get_current_cgroup_id();
#endif
}

#endif /* KN_CGROUP_BCC_H */
