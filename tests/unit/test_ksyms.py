"""Unit tests of KernelSymbols on kallsyms-format text fixtures."""

from __future__ import annotations

import pytest

from otel_kernelnet.kernel.ksyms import KallsymsRestrictedError, KernelSymbols, KsymsError

# Deliberately out of order; includes data symbols, an alias, weak and module symbols.
KALLSYMS = """\
ffffffff81e44f40 T sk_skb_reason_drop
ffffffff81000000 T _stext
ffffffff81000000 t startup_64_alias
ffffffff81001000 t do_one_initcall
ffffffff81e45100 W weak_helper
ffffffff81e45200 T kfree_skb_list_reason
ffffffff81e45300 D some_data_after_text
ffffffff82000000 T _etext
ffffffff82000010 d init_net
garbage line
ffffffffc0a01000 t nft_do_chain\t[nf_tables]
ffffffffc0a01400 T nft_register_expr\t[nf_tables]
ffffffffc0a02000 d nft_data\t[nf_tables]
"""

ZEROED = """\
0000000000000000 T _stext
0000000000000000 t do_one_initcall
0000000000000000 T sk_skb_reason_drop
0000000000000000 D init_net
"""


@pytest.fixture()
def ks() -> KernelSymbols:
    return KernelSymbols.from_text(KALLSYMS)


def test_exact_and_offset_resolution(ks):
    assert not ks.restricted
    assert ks.resolve(0xFFFFFFFF81E44F40) == "sk_skb_reason_drop+0x0"
    assert ks.resolve(0xFFFFFFFF81E44F44) == "sk_skb_reason_drop+0x4"
    assert ks.resolve(0xFFFFFFFF81E450FF) == "sk_skb_reason_drop+0x1bf"
    assert ks.resolve(0xFFFFFFFF81001234) == "do_one_initcall+0x234"


def test_weak_symbols_are_text(ks):
    assert ks.resolve(0xFFFFFFFF81E45108) == "weak_helper+0x8"


def test_alias_prefers_global(ks):
    # _stext (T) and startup_64_alias (t) share an address: the global one is shown.
    assert ks.resolve(0xFFFFFFFF81000010) == "_stext+0x10"


def test_before_first_symbol_is_hex(ks):
    assert ks.resolve(0xFFFFFFFF80FFFFFF) == "0xffffffff80ffffff"
    assert ks.resolve(0) == "0x0"


def test_data_symbols_bound_text(ks):
    # Past a data symbol, an address is not attributed to the preceding function.
    assert ks.resolve(0xFFFFFFFF81E45310) == "0xffffffff81e45310"
    assert ks.resolve(0xFFFFFFFF82000020) == "0xffffffff82000020"
    # a data symbol itself is never named
    assert ks.resolve(0xFFFFFFFF82000010) == "0xffffffff82000010"


def test_module_symbols(ks):
    assert ks.resolve(0xFFFFFFFFC0A01004) == "nft_do_chain+0x4 [nf_tables]"
    assert ks.resolve(0xFFFFFFFFC0A01400) == "nft_register_expr+0x0 [nf_tables]"
    assert ks.resolve(0xFFFFFFFFC0A02004) == "0xffffffffc0a02004"
    assert ks.address_of("nft_do_chain [nf_tables]") == 0xFFFFFFFFC0A01000


def test_len_counts_text_symbols_only(ks):
    # distinct text addresses: _stext, do_one_initcall, sk_skb_reason_drop, weak_helper,
    # kfree_skb_list_reason, _etext, nft_do_chain, nft_register_expr
    assert len(ks) == 8


def test_zeroed_addresses_detected():
    ks = KernelSymbols.from_text(ZEROED)
    assert ks.restricted
    assert "restricted" in repr(ks)
    assert ks.resolve(0xFFFFFFFF81E44F44) == "0xffffffff81e44f44"


def test_load_require_addresses(tmp_path):
    p = tmp_path / "kallsyms"
    p.write_text(ZEROED)
    assert KernelSymbols.load(str(p)).restricted
    with pytest.raises(KallsymsRestrictedError, match="root"):
        KernelSymbols.load(str(p), require_addresses=True)
    p.write_text(KALLSYMS)
    ks = KernelSymbols.load(str(p), require_addresses=True)
    assert ks.resolve(0xFFFFFFFF81E44F44) == "sk_skb_reason_drop+0x4"


def test_load_missing_file(tmp_path):
    with pytest.raises(KsymsError, match="cannot read"):
        KernelSymbols.load(str(tmp_path / "nope"))


def test_empty_text():
    ks = KernelSymbols.from_text("")
    assert not ks.restricted
    assert ks.resolve(0x1234) == "0x1234"


def test_text_address_finds_one_core_text_symbol_without_parsing_everything(tmp_path):
    from otel_kernelnet.kernel.ksyms import KallsymsRestrictedError, text_address
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _stext\n"
                 "ffffffff81e60af0 d rps_trigger_softirq_data\n"
                 "ffffffff81e60b00 D rps_trigger_softirq\n"      # data of the same name: not text
                 "ffffffff81e60c00 t rps_trigger_softirq\n"
                 "ffffffffc0a01000 t nft_do_chain\t[nf_tables]\n")
    assert text_address("rps_trigger_softirq", str(f)) == 0xFFFFFFFF81E60C00
    assert text_address("_stext", str(f)) == 0xFFFFFFFF81000000
    assert text_address("nft_do_chain", str(f)) is None  # a module's symbol: not core kernel text
    assert text_address("rps_trigger", str(f)) is None  # no prefix matches
    f.write_text("0000000000000000 T _stext\n0000000000000000 t rps_trigger_softirq\n")
    with pytest.raises(KallsymsRestrictedError):
        text_address("rps_trigger_softirq", str(f))
