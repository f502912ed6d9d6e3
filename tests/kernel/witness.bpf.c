/* SPDX-License-Identifier: Apache-2.0
 * tests/kernel/witness.py BpfSkbCount: count the hits of one raw tracepoint whose first
 * argument is an skb on a device of the network namespace NETNS. Offsets (-D) from BTF.
 */
BPF_PERCPU_ARRAY(hits, u64, 1);

int kn_witness(void *ctx)
{
	void *skb = (void *)((u64 *)ctx)[0], *dev = 0, *net = 0;
	u32 inum = 0;
	bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV);
	if (!dev)
		return 0;
	bpf_probe_read_kernel(&net, sizeof(net), dev + OFF_DEV_ND_NET);
	if (!net)
		return 0;
	bpf_probe_read_kernel(&inum, sizeof(inum), net + OFF_NET_INUM);
	if (inum == NETNS) {
		int zero = 0;
		u64 *v = hits.lookup(&zero);
		if (v)
			(*v)++;  /* per CPU; a raw tracepoint program never nests in itself */
	}
	return 0;
}
