/* SPDX-License-Identifier: Apache-2.0
 * tests/kernel/test_ringbuf_reader.py: one record per run (BPF_PROG_TEST_RUN), of a
 * size chosen by the run's sequence number n: n % 4 == 0 an 8-byte record, 1 a 13-byte
 * one, 2 a 13-byte one discarded, 3 a 301-byte one (sizes that are not multiples of 8,
 * so the reader's padding is exercised). Each carries n, and its bytes after n are
 * (u8)n. A full ring (reserve fails) is counted in kn_test_seq[1], a discard in [2].
 */
BPF_RINGBUF_OUTPUT(kn_test_ring, 1);  /* one page: records wrap every few runs */
BPF_ARRAY(kn_test_seq, u64, 3);

struct kn_r13 {
	u64 seq;
	u8 fill[5];
} __attribute__((packed));

struct kn_r301 {
	u64 seq;
	u8 fill[293];
} __attribute__((packed));

int kn_ring_test(void *ctx)
{
	int zero = 0, one = 1, two = 2;
	u64 *seq = kn_test_seq.lookup(&zero), *full = kn_test_seq.lookup(&one);
	u64 *discarded = kn_test_seq.lookup(&two);
	if (!seq || !full || !discarded)
		return 0;
	u64 n = *seq;
	*seq = n + 1;
	u32 kind = n % 4;
	if (kind == 0) {
		u64 *r = kn_test_ring.ringbuf_reserve(sizeof(u64));
		if (!r) {
			(*full)++;
			return 0;
		}
		*r = n;
		kn_test_ring.ringbuf_submit(r, 0);
	} else if (kind == 1 || kind == 2) {
		struct kn_r13 *r = kn_test_ring.ringbuf_reserve(sizeof(struct kn_r13));
		if (!r) {
			(*full)++;
			return 0;
		}
		r->seq = n;
		__builtin_memset(r->fill, n & 0xff, sizeof(r->fill));
		if (kind == 1)
			kn_test_ring.ringbuf_submit(r, 0);
		else {
			kn_test_ring.ringbuf_discard(r, 0);
			(*discarded)++;
		}
	} else {
		struct kn_r301 *r = kn_test_ring.ringbuf_reserve(sizeof(struct kn_r301));
		if (!r) {
			(*full)++;
			return 0;
		}
		r->seq = n;
		__builtin_memset(r->fill, n & 0xff, sizeof(r->fill));
		kn_test_ring.ringbuf_submit(r, 0);
	}
	return 0;
}
