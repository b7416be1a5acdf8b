#!/usr/bin/env python3
"""Writes the differential exchanges (*.txt beside this script) played by tests/it/differential/.

The exchanges are data; this script only saves typing: it spells packets in the harness's byte
language (hex, 'mqtt string', "raw", [ length-prefixed ]) for each protocol version. Edit it and
run it again (python3 generate.py) to add cases; the .txt files are what the test reads.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {}


def case(file, name, *steps):
    lines = [f"case {name}"]
    for step in steps:
        if isinstance(step, (list, tuple)):
            lines.extend(step)
        else:
            lines.append(step)
    FILES.setdefault(file, []).append("\n".join(lines))


V31, V311, V5 = "31", "311", "5"
VERSIONS = [V31, V311, V5]


def props(v, text):
    return f"[{text}] " if v == V5 else ""


def connect(v, cid, clean=True, keep=60, cprops="", will=None, user=None, pw=None,
            extra_flags=0, name=None, level=None):
    pname, lvl = {V31: ("MQIsdp", 3), V311: ("MQTT", 4), V5: ("MQTT", 5)}[v]
    if name is not None:
        pname = name
    if level is not None:
        lvl = level
    flags = (2 if clean else 0) | extra_flags
    tail = f"'{cid}'" if not cid.startswith("RAW:") else cid[4:]
    if will:
        topic, msg, qos, retain = will[:4]
        wprops = will[4] if len(will) > 4 else ""
        flags |= 4 | (qos << 3) | (retain << 5)
        tail += " " + props(v, wprops) + f"'{topic}' '{msg}'"
    if user is not None:
        flags |= 0x80
        tail += f" '{user}'"
    if pw is not None:
        flags |= 0x40
        tail += f" '{pw}'"
    return f"10[ '{pname}' {lvl:02x} {flags:02x} {keep:04x} {props(v, cprops)}{tail} ]"


def con(v, c="a", cid=None, **kw):
    """Connect client c and read its CONNACK."""
    return [f"{c} send {connect(v, c + '@@@@' if cid is None else cid, **kw)}", f"{c} expect"]


def publish(v, topic, payload, qos=0, retain=False, dup=False, pid=1, pprops=""):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    pidpart = f"{pid:04x} " if qos else ""
    return f"{first:02x}[ '{topic}' {pidpart}{props(v, pprops)}\"{payload}\" ]"


def subscribe(v, filters, pid=1, sprops=""):
    """filters: list of (filter, options byte)."""
    body = " ".join(f"'{f}' {o:02x}" for f, o in filters)
    return f"82[ {pid:04x} {props(v, sprops)}{body} ]"


def unsubscribe(v, filters, pid=1):
    body = " ".join(f"'{f}'" for f in filters)
    return f"a2[ {pid:04x} {props(v, '')}{body} ]"


def ack(kind, pid, reason=None):
    first = {"puback": "40", "pubrec": "50", "pubrel": "62", "pubcomp": "70"}[kind]
    r = f" {reason:02x}" if reason is not None else ""
    return f"{first}[ {pid:04x}{r} ]"


def disconnect(v, body=""):
    return f"e0[ {body} ]"


T = "t/@@@@"  # each case's own topic space


def sub_ready(v, c="a", flt=T + "/#", qos=0, pid=1, **kw):
    return con(v, c, **kw) + [f"{c} send {subscribe(v, [(flt, qos)], pid)}", f"{c} expect"]


# ---------------------------------------------------------------------------------------------
# Every version: CONNECT
for v in VERSIONS:
    f = f"v{v}_connect"
    p = f"v{v}-connect"
    case(f, f"{p}-clean", con(v))
    case(f, f"{p}-persistent-new", con(v, clean=False), "a send e0 00")
    case(f, f"{p}-persistent-resume", con(v, clean=False, cprops="11 0000003c" if v == V5 else ""),
         "a send e000", "a expect", con(v, "b", cid="a@@@@", clean=False, cprops="11 0000003c" if v == V5 else ""))
    case(f, f"{p}-clean-after-persistent", con(v, clean=False, cprops="11 0000003c" if v == V5 else ""),
         "a send e000", "a expect", con(v, "b", cid="a@@@@"))
    case(f, f"{p}-empty-id-clean", con(v, cid=""))
    case(f, f"{p}-empty-id-persistent", con(v, cid="", clean=False))
    case(f, f"{p}-keepalive-0", con(v, keep=0))
    case(f, f"{p}-keepalive-max", con(v, keep=65535))
    case(f, f"{p}-reserved-flag", con(v, extra_flags=1))
    case(f, f"{p}-will-qos-without-will", con(v, extra_flags=0x08))
    case(f, f"{p}-will-retain-without-will", con(v, extra_flags=0x20))
    case(f, f"{p}-will-qos-3", con(v, will=(T + "/w", "x", 3, 0)))
    case(f, f"{p}-password-without-username", con(v, pw="pw"))
    case(f, f"{p}-username-and-password", con(v, user="u", pw="pw"))
    case(f, f"{p}-username-only", con(v, user="u"))
    case(f, f"{p}-username-bad-utf8", con(v, extra_flags=0x80, cid="RAW:'a@@@@' 0002 c328"))
    case(f, f"{p}-id-bad-utf8", con(v, cid="RAW:0006 ff40404040fe"))
    case(f, f"{p}-id-nul", con(v, cid="RAW:0006 0040404040 61"))
    case(f, f"{p}-id-23", con(v, cid="abcdefghijklmnopqr@@@@x"))
    case(f, f"{p}-id-24", con(v, cid="abcdefghijklmnopqrs@@@@x"))
    case(f, f"{p}-id-65-chars", con(v, cid="x" * 61 + "@@@@"))
    case(f, f"{p}-id-with-slash-and-plus", con(v, cid="a/+#@@@@"))
    case(f, f"{p}-protocol-name-wrong", con(v, name="MQTX"))
    case(f, f"{p}-protocol-level-2", con(v, level=2))
    case(f, f"{p}-protocol-level-6", con(v, level=6))
    case(f, f"{p}-protocol-level-0x84", con(v, level=0x84))
    case(f, f"{p}-fixed-header-flags", [f"a send 1{connect(v, 'a@@@@')[1:]}", "a expect"])
    case(f, f"{p}-truncated", "a send " + connect(v, "a@@@@").replace(" 'a@@@@' ]", " ]"), "a expect")
    case(f, f"{p}-trailing-byte", [f"a send {connect(v, 'a@@@@')[:-1]} 00 ]", "a expect"])
    case(f, f"{p}-second-connect", con(v), f"a send {connect(v, 'a@@@@')}", "a expect")
    case(f, f"{p}-will-topic-wildcard", con(v, will=(T + "/+", "x", 0, 0)))
    case(f, f"{p}-will-topic-empty", con(v, will=("", "x", 0, 0)))
    case(f, f"{p}-will-topic-sys", con(v, will=("$SYS/@@@@", "x", 0, 0)))
    case(f, f"{p}-will-qos2-retain", con(v, will=(T + "/w", "x", 2, 1)))
    case(f, f"{p}-takeover", con(v, "a", cid="a@@@@"), con(v, "b", cid="a@@@@"), "a expect")
    case(f, f"{p}-takeover-persistent", con(v, "a", cid="a@@@@", clean=False, cprops="11 0000003c" if v == V5 else ""),
         con(v, "b", cid="a@@@@", clean=False, cprops="11 0000003c" if v == V5 else ""), "a expect")
    case(f, f"{p}-first-packet-publish", f"a send {publish(v, T, 'x')}", "a expect")
    case(f, f"{p}-first-packet-pingreq", "a send c000", "a expect")
    case(f, f"{p}-first-packet-subscribe", f"a send {subscribe(v, [(T, 0)])}", "a expect")
    case(f, f"{p}-remaining-length-5-bytes", "a send 10 ffffffff7f", "a expect")
    case(f, f"{p}-disconnect-then-nothing", con(v), "a send e000", "a expect")
    case(f, f"{p}-pingreq", con(v), "a send c000", "a expect")
    case(f, f"{p}-pingreq-twice-batched", con(v), "a send c000 c000", "a expect")

# ---------------------------------------------------------------------------------------------
# Every version: packets a client may not send, and fixed header rules
for v in VERSIONS:
    f = f"v{v}_forbidden"
    p = f"v{v}-forbidden"
    for name, bytes_ in [
        ("connack", "20 02 0000"), ("suback", "90 03 0001 00"), ("unsuback", "b0 02 0001"),
        ("pingresp", "d0 00"), ("type-0", "00 00"), ("type-15", "f0 00"),
        ("pingreq-with-body", "c0 01 00"), ("pingreq-flags", "c1 00"),
        ("puback-flags", "42 02 0001"), ("pubrec-flags", "52 02 0001"),
        ("pubrel-flags-0", "60 02 0001"), ("pubcomp-flags", "72 02 0001"),
        ("subscribe-flags-0", f"80[ 0001 '{T}' 00 ]"), ("unsubscribe-flags-0", f"a0[ 0001 '{T}' ]"),
        ("disconnect-flags", "e1 00"), ("remaining-length-non-minimal", "c0 8000"),
        ("publish-qos-3", f"36[ '{T}' 0001 {props(v, '')}\"x\" ]"),
        ("publish-truncated-topic", "30 03 0005 61"),
        ("puback-short", "40 01 00"), ("pubrel-packet-id-0", "62 02 0000"),
    ]:
        case(f, f"{p}-{name}", con(v), f"a send {bytes_}", "a expect")

# ---------------------------------------------------------------------------------------------
# Every version: PUBLISH and QoS flows
for v in VERSIONS:
    f = f"v{v}_publish"
    p = f"v{v}-publish"
    subscriber = sub_ready(v, "s", T + "/#", 2)
    case(f, f"{p}-qos0", subscriber, con(v, "a"), f"a send {publish(v, T + '/x', 'hello')}", "s expect", "a expect")
    case(f, f"{p}-qos1", subscriber, con(v, "a"), f"a send {publish(v, T + '/x', 'hello', 1, pid=7)}", "a expect", "s expect")
    case(f, f"{p}-qos2", subscriber, con(v, "a"), f"a send {publish(v, T + '/x', 'hello', 2, pid=7)}", "a expect",
         f"a send {ack('pubrel', 7)}", "a expect", "s expect")
    case(f, f"{p}-qos1-no-subscriber", con(v), f"a send {publish(v, T + '/x', 'hello', 1, pid=3)}", "a expect")
    case(f, f"{p}-qos2-no-subscriber", con(v), f"a send {publish(v, T + '/x', 'hello', 2, pid=3)}", "a expect",
         f"a send {ack('pubrel', 3)}", "a expect")
    case(f, f"{p}-qos1-dup-resend", con(v), f"a send {publish(v, T, 'x', 1, pid=3)}", "a expect",
         f"a send {publish(v, T, 'x', 1, dup=True, pid=3)}", "a expect")
    case(f, f"{p}-qos2-resend-before-pubrel", subscriber, con(v), f"a send {publish(v, T + '/q', 'x', 2, pid=3)}", "a expect",
         f"a send {publish(v, T + '/q', 'x', 2, dup=True, pid=3)}", "a expect",
         f"a send {ack('pubrel', 3)}", "a expect", "s expect")
    case(f, f"{p}-qos2-resent-many-times", con(v),
         *[[f"a send {publish(v, T, 'x', 2, dup=True, pid=3)}", "a expect"] for _ in range(6)])
    case(f, f"{p}-qos0-dup", subscriber, con(v), f"a send {publish(v, T + '/d', 'x', 0, dup=True)}", "a expect", "s expect")
    case(f, f"{p}-qos1-packet-id-0", con(v), f"a send {publish(v, T, 'x', 1, pid=0)}", "a expect")
    case(f, f"{p}-qos2-packet-id-0", con(v), f"a send {publish(v, T, 'x', 2, pid=0)}", "a expect")
    case(f, f"{p}-pubrel-unknown", con(v), f"a send {ack('pubrel', 9)}", "a expect")
    case(f, f"{p}-puback-unknown", con(v), f"a send {ack('puback', 9)}", "a send c000", "a expect")
    case(f, f"{p}-pubrec-unknown", con(v), f"a send {ack('pubrec', 9)}", "a send c000", "a expect")
    case(f, f"{p}-pubcomp-unknown", con(v), f"a send {ack('pubcomp', 9)}", "a send c000", "a expect")
    case(f, f"{p}-topic-plus", con(v), f"a send {publish(v, T + '/+', 'x')}", "a expect")
    case(f, f"{p}-topic-hash", con(v), f"a send {publish(v, T + '/#', 'x')}", "a expect")
    case(f, f"{p}-topic-empty", con(v), f"a send {publish(v, '', 'x')}", "a expect")
    case(f, f"{p}-topic-nul", con(v), f"a send 30[ 0003 610062 \"x\" ]" if v != V5 else "a send 30[ 0003 610062 00 \"x\" ]", "a expect")
    case(f, f"{p}-topic-bad-utf8", con(v), f"a send 30[ 0002 c328 {props(v, '')}\"x\" ]", "a expect")
    case(f, f"{p}-topic-sys", con(v), f"a send {publish(v, '$SYS/@@@@', 'x', 1, pid=2)}", "a expect")
    case(f, f"{p}-topic-share", con(v), f"a send {publish(v, '$share/g/@@@@', 'x', 1, pid=2)}", "a expect")
    case(f, f"{p}-topic-dollar-other", con(v), f"a send {publish(v, '$x@@@@/a', 'x', 1, pid=2)}", "a expect")
    case(f, f"{p}-topic-leading-slash", sub_ready(v, "s", "/" + T + "/#"), con(v), f"a send {publish(v, '/' + T + '/a', 'x')}", "s expect")
    case(f, f"{p}-empty-payload", subscriber, con(v), f"a send {publish(v, T + '/e', '')}", "s expect")
    case(f, f"{p}-large-payload", subscriber, con(v), f"a send {publish(v, T + '/l', 'abcdefgh')[:-3]}\"*20000 ]", "s expect")
    case(f, f"{p}-topic-65535", con(v), f"a send 32[ '{T}/{'x' * 0}\"*0 ' 0001 ]" if False else "a send c000",
         f"a send 32[ ffff \"t/@@@@/\" \"x\"*65528 0001 {props(v, '')}\"p\" ]", "a expect")
    case(f, f"{p}-subscribe-topic-65535", con(v),
         f"a send 82[ 0001 {props(v, '')}ffff \"t/@@@@/\" \"x\"*65528 01 ]", "a expect")
    case(f, f"{p}-qos-downgrade", sub_ready(v, "s", T + "/#", 0), con(v), f"a send {publish(v, T + '/g', 'x', 2, pid=4)}",
         "a expect", f"a send {ack('pubrel', 4)}", "a expect", "s expect")
    case(f, f"{p}-qos1-to-qos1-sub", sub_ready(v, "s", T + "/#", 1), con(v), f"a send {publish(v, T + '/g', 'x', 1, pid=4)}",
         "a expect", "s expect", f"s send {ack('puback', 1)}", "s send c000", "s expect")
    case(f, f"{p}-qos2-to-qos2-sub", sub_ready(v, "s", T + "/#", 2), con(v), f"a send {publish(v, T + '/g', 'x', 2, pid=4)}",
         "a expect", f"a send {ack('pubrel', 4)}", "a expect", "s expect", f"s send {ack('pubrec', 1)}", "s expect",
         f"s send {ack('pubcomp', 1)}", "s send c000", "s expect")
    case(f, f"{p}-pubrec-for-qos1-delivery", sub_ready(v, "s", T + "/#", 1), con(v), f"a send {publish(v, T + '/g', 'x', 1, pid=4)}",
         "a expect", "s expect", f"s send {ack('pubrec', 1)}", "s expect")
    case(f, f"{p}-puback-for-qos2-delivery", sub_ready(v, "s", T + "/#", 2), con(v), f"a send {publish(v, T + '/g', 'x', 2, pid=4)}",
         "a expect", f"a send {ack('pubrel', 4)}", "a expect", "s expect", f"s send {ack('puback', 1)}", "s send c000", "s expect")
    case(f, f"{p}-pubcomp-before-pubrec", sub_ready(v, "s", T + "/#", 2), con(v), f"a send {publish(v, T + '/g', 'x', 2, pid=4)}",
         "a expect", f"a send {ack('pubrel', 4)}", "a expect", "s expect", f"s send {ack('pubcomp', 1)}", "s send c000", "s expect")
    case(f, f"{p}-own-message-echo", sub_ready(v, "a", T + "/#", 0), f"a send {publish(v, T + '/o', 'x')}", "a expect")
    case(f, f"{p}-overlapping-subscriptions", con(v, "s"),
         f"s send {subscribe(v, [(T + '/#', 0), (T + '/+', 1)], 1)}", "s expect",
         con(v), f"a send {publish(v, T + '/o', 'x', 1, pid=2)}", "a expect", "s expect")
    case(f, f"{p}-wildcard-matching", con(v, "s"),
         f"s send {subscribe(v, [(T + '/+/c', 0), (T + '/a/#', 0), ('t/+/x/y', 0)], 1)}", "s expect",
         con(v), f"a send {publish(v, T + '/b/c', '1')} {publish(v, T + '/a', '2')} {publish(v, T + '/a/b/c', '3')} {publish(v, T + '/c', '4')}",
         "s expect")
    case(f, f"{p}-batched-qos1", con(v), " ".join(["a send"] + [publish(v, T, str(i), 1, pid=i + 1) for i in range(10)]), "a expect")
    case(f, f"{p}-in-flight-order", sub_ready(v, "s", T + "/#", 1), con(v),
         " ".join(["a send"] + [publish(v, T + '/n', str(i), 1, pid=i + 1) for i in range(30)]), "a expect", "s expect")

# ---------------------------------------------------------------------------------------------
# Every version: SUBSCRIBE and UNSUBSCRIBE
for v in VERSIONS:
    f = f"v{v}_subscribe"
    p = f"v{v}-subscribe"
    for qos in range(3):
        case(f, f"{p}-qos{qos}", con(v), f"a send {subscribe(v, [(T, qos)], 3)}", "a expect")
    case(f, f"{p}-qos3", con(v), f"a send {subscribe(v, [(T, 3)], 3)}", "a expect")
    case(f, f"{p}-reserved-option-bits", con(v), f"a send {subscribe(v, [(T, 0xc1)], 3)}", "a expect")
    case(f, f"{p}-option-bit-2", con(v), f"a send {subscribe(v, [(T, 0x04)], 3)}", "a expect")
    case(f, f"{p}-no-filters", con(v), f"a send 82[ 0003 {props(v, '')}]", "a expect")
    case(f, f"{p}-packet-id-0", con(v), f"a send {subscribe(v, [(T, 0)], 0)}", "a expect")
    case(f, f"{p}-many-filters", con(v), f"a send {subscribe(v, [(T + '/' + str(i), i % 3) for i in range(8)], 5)}", "a expect")
    for name, flt in [("hash-middle", T + "/#/b"), ("hash-glued", T + "/a#"), ("plus-glued", T + "/a+"),
                      ("plus-before", T + "/+a"), ("empty", ""), ("share-no-filter", "$share/g"),
                      ("share-empty-group", "$share//" + T), ("share-wildcard-group", "$share/g+/" + T),
                      ("share-ok", "$share/g/" + T), ("hash-alone-level", T + "/#"), ("plus-only", "+/@@@@"),
                      ("sys", "$SYS/@@@@/#"), ("nul", "RAW")]:
        if flt == "RAW":
            case(f, f"{p}-filter-{name}", con(v), f"a send 82[ 0003 {props(v, '')}0003 610062 00 ]", "a expect")
        else:
            case(f, f"{p}-filter-{name}", con(v), f"a send {subscribe(v, [(flt, 0)], 3)}", "a expect")
    case(f, f"{p}-mixed-valid-invalid", con(v), f"a send {subscribe(v, [(T, 1), (T + '/#/x', 1), (T + '/b', 2)], 3)}", "a expect")
    case(f, f"{p}-bad-utf8", con(v), f"a send 82[ 0003 {props(v, '')}0002 c328 00 ]", "a expect")
    case(f, f"{p}-missing-options", con(v), f"a send 82[ 0003 {props(v, '')}'{T}' ]", "a expect")
    case(f, f"{p}-resubscribe-changes-qos", sub_ready(v, "a", T, 0), f"a send {subscribe(v, [(T, 2)], 4)}", "a expect",
         f"a send {publish(v, T, 'x', 1, pid=9)}", "a expect")
    case(f, f"{p}-unsubscribe", sub_ready(v, "a", T, 0), f"a send {unsubscribe(v, [T], 4)}", "a expect",
         f"a send {publish(v, T, 'x')}", "a send c000", "a expect")
    case(f, f"{p}-unsubscribe-unknown", con(v), f"a send {unsubscribe(v, [T], 4)}", "a expect")
    case(f, f"{p}-unsubscribe-several", sub_ready(v, "a", T, 0), f"a send {unsubscribe(v, [T, T + '/z', T + '/#'], 4)}", "a expect")
    case(f, f"{p}-unsubscribe-no-filters", con(v), f"a send a2[ 0004 {props(v, '')}]", "a expect")
    case(f, f"{p}-unsubscribe-invalid-filter", con(v), f"a send {unsubscribe(v, [T + '/#/x'], 4)}", "a expect")
    case(f, f"{p}-unsubscribe-packet-id-0", con(v), f"a send {unsubscribe(v, [T], 0)}", "a expect")
    case(f, f"{p}-unsubscribe-bad-utf8", con(v), f"a send a2[ 0004 {props(v, '')}0002 c328 ]", "a expect")

# ---------------------------------------------------------------------------------------------
# Every version: retained messages
for v in VERSIONS:
    f = f"v{v}_retain"
    p = f"v{v}-retain"
    case(f, f"{p}-delivered-on-subscribe", con(v, "a"), f"a send {publish(v, T + '/r', 'kept', 1, True, pid=2)}", "a expect",
         sub_ready(v, "s", T + "/#", 1), "s expect")
    case(f, f"{p}-qos0-retained", con(v, "a"), f"a send {publish(v, T + '/r', 'kept', 0, True)} c000", "a expect",
         sub_ready(v, "s", T + "/#", 2))
    case(f, f"{p}-live-delivery-flag", sub_ready(v, "s", T + "/#", 0), con(v, "a"), f"a send {publish(v, T + '/r', 'kept', 0, True)}",
         "s expect")
    case(f, f"{p}-cleared-by-empty", con(v, "a"), f"a send {publish(v, T + '/r', 'kept', 0, True)} {publish(v, T + '/r', '', 0, True)} c000",
         "a expect", sub_ready(v, "s", T + "/#", 0), "s expect")
    case(f, f"{p}-clear-several-deep", con(v, "a"),
         "a send " + " ".join(publish(v, f"{T}/d/{i}/e/f", 'v', 0, True) for i in range(5)),
         "a send " + " ".join(publish(v, f"{T}/d/{i}/e/f", '', 0, True) for i in range(5)) + " c000", "a expect",
         sub_ready(v, "s", T + "/#", 0), "s expect")
    case(f, f"{p}-replaced", con(v, "a"), f"a send {publish(v, T + '/r', 'one', 0, True)} {publish(v, T + '/r', 'two', 1, True, pid=3)}",
         "a expect", sub_ready(v, "s", T + "/r", 2))
    case(f, f"{p}-wildcards", con(v, "a"), "a send " + " ".join(publish(v, f"{T}/{x}", x, 0, True) for x in ["a", "a/b", "c/b", "a/b/c"]) + " c000",
         "a expect", sub_ready(v, "s", T + "/+/b", 0), f"s send {subscribe(v, [(T + '/a/#', 0)], 2)}", "s expect")
    case(f, f"{p}-qos-of-retained-min", con(v, "a"), f"a send {publish(v, T + '/r', 'x', 2, True, pid=3)}", "a expect",
         f"a send {ack('pubrel', 3)}", "a expect", sub_ready(v, "s", T + "/r", 1))
    case(f, f"{p}-resubscribe-sends-again", con(v, "a"), f"a send {publish(v, T + '/r', 'x', 0, True)} c000", "a expect",
         sub_ready(v, "s", T + "/r", 0), f"s send {subscribe(v, [(T + '/r', 0)], 2)}", "s expect")

# ---------------------------------------------------------------------------------------------
# Every version: wills and sessions
for v in VERSIONS:
    f = f"v{v}_will"
    p = f"v{v}-will"
    for qos in range(3):
        case(f, f"{p}-on-close-qos{qos}", sub_ready(v, "s", T + "/#", 2), con(v, "a", will=(T + "/w", "gone", qos, 0)),
             "a close", "s expect")
    case(f, f"{p}-not-on-disconnect", sub_ready(v, "s", T + "/#", 2), con(v, "a", will=(T + "/w", "gone", 0, 0)),
         "a send e000", "a expect", "s send c000", "s expect")
    case(f, f"{p}-on-protocol-error", sub_ready(v, "s", T + "/#", 2), con(v, "a", will=(T + "/w", "gone", 0, 0)),
         "a send 20 02 0000", "a expect", "s expect")
    case(f, f"{p}-retained", con(v, "a", will=(T + "/w", "gone", 1, 1)), "a close", "wait 300",
         sub_ready(v, "s", T + "/#", 2))
    case(f, f"{p}-on-takeover-clean", sub_ready(v, "s", T + "/#", 2), con(v, "a", cid="a@@@@", will=(T + "/w", "gone", 0, 0)),
         con(v, "b", cid="a@@@@"), "a expect", "s expect")
    case(f, f"{p}-on-takeover-persistent", sub_ready(v, "s", T + "/#", 2),
         con(v, "a", cid="a@@@@", clean=False, cprops="11 0000003c" if v == V5 else "", will=(T + "/w", "gone", 0, 0)),
         con(v, "b", cid="a@@@@", clean=False, cprops="11 0000003c" if v == V5 else ""), "a expect", "s expect")

    f = f"v{v}_session"
    p = f"v{v}-session"
    sess = "11 0000003c" if v == V5 else ""
    case(f, f"{p}-queued-while-away", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 1)], 1)}", "a expect",
         "a send e000", "a expect", con(v, "p"), f"p send {publish(v, T + '/q', 'q1', 1, pid=1)} {publish(v, T + '/q', 'q0', 0)}",
         "p expect", con(v, "b", cid="a@@@@", clean=False, cprops=sess), "b expect")
    case(f, f"{p}-qos2-queued-while-away", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 2)], 1)}", "a expect",
         "a send e000", "a expect", con(v, "p"), f"p send {publish(v, T + '/q', 'q2', 2, pid=1)}",
         "p expect", f"p send {ack('pubrel', 1)}", "p expect", con(v, "b", cid="a@@@@", clean=False, cprops=sess), "b expect")
    case(f, f"{p}-unacked-resent-with-dup", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 1)], 1)}", "a expect",
         con(v, "p"), f"p send {publish(v, T + '/q', 'x', 1, pid=1)}", "p expect", "a expect", "a close", "wait 200",
         con(v, "b", cid="a@@@@", clean=False, cprops=sess), "b expect")
    case(f, f"{p}-pubrel-resent", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 2)], 1)}", "a expect",
         con(v, "p"), f"p send {publish(v, T + '/q', 'x', 2, pid=1)}", "p expect", f"p send {ack('pubrel', 1)}", "p expect",
         "a expect", f"a send {ack('pubrec', 1)}", "a expect", "a close", "wait 200",
         con(v, "b", cid="a@@@@", clean=False, cprops=sess), "b expect")
    case(f, f"{p}-subscriptions-kept", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 0)], 1)}", "a expect",
         "a send e000", con(v, "b", cid="a@@@@", clean=False, cprops=sess), con(v, "p"), f"p send {publish(v, T + '/k', 'x')}", "b expect")
    case(f, f"{p}-clean-discards", con(v, "a", clean=False, cprops=sess), f"a send {subscribe(v, [(T + '/#', 0)], 1)}", "a expect",
         "a send e000", con(v, "b", cid="a@@@@"), con(v, "p"), f"p send {publish(v, T + '/k', 'x')}", "b send c000", "b expect")
    case(f, f"{p}-incoming-qos2-survives-reconnect", con(v, "a", clean=False, cprops=sess), f"a send {publish(v, T, 'x', 2, pid=5)}",
         "a expect", "a close", "wait 200", con(v, "b", cid="a@@@@", clean=False, cprops=sess), f"b send {ack('pubrel', 5)}", "b expect")

# ---------------------------------------------------------------------------------------------
# MQTT 5 only
f = "v5_properties"
p = "v5"
v = V5
for name, cp in [("session-expiry", "11 0000000a"), ("receive-maximum", "21 0005"),
                 ("receive-maximum-0", "21 0000"), ("maximum-packet-size", "27 00001000"),
                 ("maximum-packet-size-0", "27 00000000"), ("topic-alias-maximum", "22 0005"),
                 ("request-response-information", "19 01"), ("request-response-information-2", "19 02"),
                 ("request-problem-information-0", "17 00"), ("request-problem-information-2", "17 02"),
                 ("user-property", "26 '@@@@' 'v'"), ("authentication-method", "15 'SCRAM'"),
                 ("authentication-data-alone", "16 0001 00"),
                 ("duplicate-session-expiry", "11 0000000a 11 0000000a"), ("duplicate-receive-maximum", "21 0005 21 0005"),
                 ("forbidden-payload-format", "01 01"), ("forbidden-topic-alias", "23 0001"),
                 ("unknown-property", "7f 00"), ("truncated-property", "11 0000"),
                 ("all-allowed", "11 0000000a 21 0014 27 00010000 22 000a 19 00 17 01 26 'k' 'v'"),
                 ("session-expiry-max", "11 ffffffff")]:
    case(f, f"{p}-connect-{name}", con(v, cprops=cp))
case(f, f"{p}-connect-properties-length-too-long", "a send 10[ 'MQTT' 05 02 003c 10 'a@@@@' ]", "a expect")
case(f, f"{p}-connect-keepalive-0-empty-id", con(v, cid="", keep=0))
case(f, f"{p}-connect-request-response-empty-id", con(v, cid="", cprops="19 01"))
for name, wp in [("delay", "18 00000000"), ("payload-format", "01 01"), ("payload-format-bad-utf8", "01 01"),
                 ("message-expiry", "02 0000003c"), ("content-type", "03 'text/plain'"),
                 ("response-topic", "08 't/@@@@/resp'"), ("response-topic-wildcard", "08 't/#'"),
                 ("correlation", "09 0003 010203"), ("user-properties", "26 'a' 'b' 26 'a' 'c'"),
                 ("duplicate-delay", "18 00000001 18 00000001"), ("forbidden-topic-alias", "23 0001"),
                 ("all", "01 01 02 0000003c 03 'ct' 08 't/@@@@/r' 09 0001 07 26 'x' 'y' 18 00000000")]:
    msg = "gone" if name != "payload-format-bad-utf8" else "RAW"
    if msg == "RAW":
        connect_bytes = connect(v, "a@@@@")[:-2] + ""  # placeholder, replaced below
        raw = f"10[ 'MQTT' 05 06 003c [] 'a@@@@' [{wp}] '{T}/w' 0002 c328 ]"
        case(f, f"{p}-will-{name}", sub_ready(v, "s", T + "/#", 2), f"a send {raw}", "a expect", "a close", "s expect")
    else:
        case(f, f"{p}-will-{name}", sub_ready(v, "s", T + "/#", 2), con(v, "a", will=(T + "/w", msg, 1, 0, wp)),
             "a close", "s expect")
case(f, f"{p}-will-delay-published-later", sub_ready(v, "s", T + "/#", 2),
     con(v, "a", cprops="11 0000000a", will=(T + "/w", "late", 0, 0, "18 00000001")), "a close", "s expect", "wait 1500", "s expect")
case(f, f"{p}-will-delay-cancelled-by-reconnect", sub_ready(v, "s", T + "/#", 2),
     con(v, "a", cprops="11 0000000a", will=(T + "/w", "late", 0, 0, "18 00000002")), "a close", "wait 300",
     con(v, "b", cid="a@@@@", clean=False, cprops="11 0000000a"), "wait 2500", "s expect")
case(f, f"{p}-will-delay-longer-than-session", sub_ready(v, "s", T + "/#", 2),
     con(v, "a", cprops="11 00000001", will=(T + "/w", "at-expiry", 0, 0, "18 0000003c")), "a close", "s expect", "wait 1800", "s expect")
case(f, f"{p}-will-disconnect-with-will", sub_ready(v, "s", T + "/#", 2),
     con(v, "a", will=(T + "/w", "bye", 0, 0)), "a send e0[ 04 ]", "a expect", "s expect")
case(f, f"{p}-will-disconnect-normal", sub_ready(v, "s", T + "/#", 2),
     con(v, "a", will=(T + "/w", "bye", 0, 0)), "a send e0[ 00 00 ]", "a expect", "s send c000", "s expect")

f = "v5_publish"
case(f, f"{p}-puback-no-subscribers", con(v), f"a send {publish(v, T, 'x', 1, pid=1)}", "a expect")
case(f, f"{p}-pubrec-no-subscribers", con(v), f"a send {publish(v, T, 'x', 2, pid=1)}", "a expect")
case(f, f"{p}-puback-no-local-only-match", sub_ready(v, "a", T, 1 | 4), f"a send {publish(v, T, 'x', 1, pid=5)}", "a expect")
case(f, f"{p}-no-local-other-client-gets-it", sub_ready(v, "a", T, 1 | 4), sub_ready(v, "s", T, 0),
     f"a send {publish(v, T, 'x', 1, pid=5)}", "a expect", "s expect")
case(f, f"{p}-retain-as-published", sub_ready(v, "s", T + "/#", 0 | 8), con(v), f"a send {publish(v, T + '/r', 'x', 0, True)}", "s expect")
case(f, f"{p}-retain-handling-1", con(v), f"a send {publish(v, T + '/r', 'x', 0, True)} c000", "a expect",
     sub_ready(v, "s", T + "/#", 0x10), f"s send {subscribe(v, [(T + '/#', 0x10)], 2)}", "s expect")
case(f, f"{p}-retain-handling-2", con(v), f"a send {publish(v, T + '/r', 'x', 0, True)} c000", "a expect",
     sub_ready(v, "s", T + "/#", 0x20))
case(f, f"{p}-retain-handling-3", con(v), f"a send {subscribe(v, [(T, 0x30)], 2)}", "a expect")
case(f, f"{p}-subscription-identifier", sub_ready(v, "s", T + "/#", 1) [:-2] + [f"s send {subscribe(v, [(T + '/#', 1)], 1, '0b 05')}", "s expect"],
     con(v), f"a send {publish(v, T + '/i', 'x')}", "s expect")
case(f, f"{p}-subscription-identifiers-two", con(v, "s"), f"s send {subscribe(v, [(T + '/#', 0)], 1, '0b 05')}",
     f"s send {subscribe(v, [(T + '/+', 0)], 2, '0b 8001')}", "s expect", con(v), f"a send {publish(v, T + '/i', 'x')}", "s expect")
case(f, f"{p}-subscription-identifier-0", con(v), f"a send {subscribe(v, [(T, 0)], 1, '0b 00')}", "a expect")
case(f, f"{p}-subscription-identifier-twice", con(v), f"a send {subscribe(v, [(T, 0)], 1, '0b 01 0b 02')}", "a expect")
case(f, f"{p}-subscribe-user-property", con(v), f"a send {subscribe(v, [(T, 0)], 1, '26 0001 61 0001 62')}", "a expect")
case(f, f"{p}-subscribe-forbidden-property", con(v), f"a send {subscribe(v, [(T, 0)], 1, '01 01')}", "a expect")
case(f, f"{p}-publish-subscription-identifier-from-client", con(v), f"a send {publish(v, T, 'x', 0, pprops='0b 01')}", "a expect")
case(f, f"{p}-shared-subscription", con(v, "s1"), f"s1 send {subscribe(v, [('$share/g/' + T, 1)], 1)}", "s1 expect",
     con(v, "s2"), f"s2 send {subscribe(v, [('$share/g/' + T, 1)], 1)}", "s2 expect",
     con(v), "a send " + " ".join(publish(v, T, str(i), 0) for i in range(4)), "s1 expect", "s2 expect")
case(f, f"{p}-shared-subscription-no-local", con(v), f"a send {subscribe(v, [('$share/g/' + T, 4)], 1)}", "a expect")
case(f, f"{p}-shared-retained-not-sent", con(v), f"a send {publish(v, T, 'x', 0, True)} c000", "a expect",
     con(v, "s"), f"s send {subscribe(v, [('$share/g/' + T, 1)], 1)}", "s expect")
case(f, f"{p}-unsubscribe-shared", con(v), f"a send {subscribe(v, [('$share/g/' + T, 1)], 1)}", "a expect",
     f"a send {unsubscribe(v, ['$share/g/' + T], 2)}", "a expect")
for name, pp in [("payload-format-utf8", "01 01"), ("payload-format-2", "01 02"), ("message-expiry", "02 0000003c"),
                 ("content-type", "03 'json'"), ("response-topic", "08 't/@@@@/resp'"),
                 ("response-topic-wildcard", "08 't/+'"), ("correlation-data", "09 0002 abcd"),
                 ("user-properties", "26 'a' 'b' 26 'c' 'd'"), ("duplicate-payload-format", "01 01 01 01"),
                 ("forbidden-session-expiry", "11 00000001"), ("topic-alias-0", "23 0000"),
                 ("topic-alias-11", "23 000b")]:
    case(f, f"{p}-publish-{name}", sub_ready(v, "s", T + "/#", 1), con(v), f"a send {publish(v, T + '/p', 'x', 1, pid=2, pprops=pp)}",
         "a expect", "s expect")
case(f, f"{p}-publish-payload-format-utf8-bad", sub_ready(v, "s", T + "/#", 1), con(v),
     f"a send 32[ '{T}/p' 0002 [01 01] c328 ]", "a expect", "s expect")
case(f, f"{p}-message-expiry-elapsed-while-queued", con(v, "s", clean=False, cprops="11 0000003c"),
     f"s send {subscribe(v, [(T + '/#', 1)], 1)}", "s expect", "s send e000", con(v),
     f"a send {publish(v, T + '/e', 'short', 1, pid=1, pprops='02 00000001')} {publish(v, T + '/e', 'long', 1, pid=2)}",
     "a expect", "wait 2200", con(v, "s2", cid="s@@@@", clean=False, cprops="11 0000003c"))
case(f, f"{p}-topic-alias-set-and-use", sub_ready(v, "s", T + "/#", 0), con(v),
     f"a send {publish(v, T + '/a', 'one', pprops='23 0001')} {publish(v, '', 'two', pprops='23 0001')}", "s expect")
case(f, f"{p}-topic-alias-unset", con(v), f"a send {publish(v, '', 'x', pprops='23 0002')}", "a expect")
case(f, f"{p}-topic-alias-unset-qos1", con(v), f"a send {publish(v, '', 'x', 1, pid=1, pprops='23 0002')}", "a expect")
case(f, f"{p}-topic-alias-too-big", con(v), f"a send {publish(v, T, 'x', pprops='23 000b')}", "a expect")
case(f, f"{p}-topic-alias-10", con(v), f"a send {publish(v, T, 'x', 1, pid=1, pprops='23 000a')}", "a expect")
case(f, f"{p}-topic-alias-replaced", sub_ready(v, "s", T + "/#", 0), con(v),
     f"a send {publish(v, T + '/a', '1', pprops='23 0001')} {publish(v, T + '/b', '2', pprops='23 0001')} {publish(v, '', '3', pprops='23 0001')}", "s expect")
case(f, f"{p}-topic-alias-outbound", con(v, "s", cprops="22 0005"), f"s send {subscribe(v, [(T + '/#', 0)], 1)}", "s expect",
     con(v), f"a send {publish(v, T + '/a', '1')} {publish(v, T + '/a', '2')}", "s expect")
case(f, f"{p}-receive-maximum-exceeded", con(v),
     "a send " + " ".join(publish(v, T, str(i), 2, pid=i + 1) for i in range(21)), "a expect")
case(f, f"{p}-receive-maximum-reached", con(v),
     "a send " + " ".join(publish(v, T, str(i), 2, pid=i + 1) for i in range(20)), "a expect")
case(f, f"{p}-client-receive-maximum-1", con(v, "s", cprops="21 0001"), f"s send {subscribe(v, [(T + '/#', 1)], 1)}", "s expect",
     con(v), "a send " + " ".join(publish(v, T + "/m", str(i), 1, pid=i + 1) for i in range(3)), "a expect", "s expect",
     f"s send {ack('puback', 1)}", "s expect")
case(f, f"{p}-client-maximum-packet-size", con(v, "s", cprops="27 00000020"), f"s send {subscribe(v, [(T + '/#', 1)], 1)}", "s expect",
     con(v), f"a send {publish(v, T + '/m', 'small', 1, pid=1)} {publish(v, T + '/m', 'x' * 60, 1, pid=2)} {publish(v, T + '/m', 'after', 1, pid=3)}",
     "a expect", "s expect")
case(f, f"{p}-client-maximum-packet-size-queued", con(v, "s", clean=False, cprops="11 0000003c 27 00000020"),
     f"s send {subscribe(v, [(T + '/#', 1)], 1)}", "s expect", "s send e000", con(v),
     f"a send {publish(v, T + '/m', 'x' * 60, 1, pid=2)} {publish(v, T + '/m', 'after', 1, pid=3)}", "a expect",
     con(v, "s2", cid="s@@@@", clean=False, cprops="11 0000003c 27 00000020"))
case(f, f"{p}-puback-with-reason", sub_ready(v, "s", T + "/#", 1), con(v), f"a send {publish(v, T + '/r', 'x', 0)}",
     "s expect", f"s send 40[ 0001 10 ]", "s send c000", "s expect")
case(f, f"{p}-puback-with-properties", con(v), f"a send 40[ 0009 00 [1f 'why'] ] c000", "a expect")
case(f, f"{p}-puback-bad-reason", con(v), f"a send 40[ 0009 99 ] c000", "a expect")
case(f, f"{p}-pubrel-reason-92", con(v), f"a send 62[ 0009 92 ]", "a expect")
case(f, f"{p}-pubrel-bad-reason", con(v), f"a send 62[ 0009 10 ]", "a expect")
case(f, f"{p}-pubrec-error-reason", sub_ready(v, "s", T + "/#", 2), con(v), f"a send {publish(v, T + '/r', 'x', 1, pid=1)}", "a expect",
     "s expect", f"s send 50[ 0001 80 ]", "s send c000", "s expect")
case(f, f"{p}-auth-packet", con(v), "a send f0[ 18 [15 'x'] ]", "a expect")
case(f, f"{p}-auth-empty", con(v), "a send f0 00", "a expect")
case(f, f"{p}-disconnect-reason-only", con(v), "a send e0[ 00 ]", "a expect")
case(f, f"{p}-disconnect-bad-reason", con(v), "a send e0[ 99 ]", "a expect")
case(f, f"{p}-disconnect-session-expiry-from-zero", con(v), "a send e0[ 00 [11 0000000a] ]", "a expect")
case(f, f"{p}-disconnect-session-expiry-changed", con(v, cprops="11 0000000a"), "a send e0[ 00 [11 00000000] ]", "a expect",
     con(v, "b", cid="a@@@@", clean=False))
case(f, f"{p}-disconnect-reason-string", con(v), "a send e0[ 00 [1f 'bye'] ]", "a expect")
case(f, f"{p}-disconnect-forbidden-property", con(v), "a send e0[ 00 [01 01] ]", "a expect")
case(f, f"{p}-disconnect-server-reference", con(v), "a send e0[ 00 [1c 'x'] ]", "a expect")
case(f, f"{p}-session-expiry-resume", con(v, cprops="11 0000003c"), "a send e000", con(v, "b", cid="a@@@@", clean=False))
case(f, f"{p}-session-expired", con(v, cprops="11 00000001"), "a send e000", "wait 2500", con(v, "b", cid="a@@@@", clean=False))
case(f, f"{p}-session-expiry-0-not-resumed", con(v, cprops=""), "a send e000", con(v, "b", cid="a@@@@", clean=False))
case(f, f"{p}-takeover-disconnect-reason", con(v), con(v, "b", cid="a@@@@"), "a expect")
case(f, f"{p}-keepalive-timeout", con(v, keep=1), "wait 4000", "a expect")
case(f, f"{p}-request-problem-info-0-error", con(v, cprops="17 00"), f"a send {publish(v, T, 'x', 1, pid=1, pprops='23 000b')}", "a expect")
case(f, f"{p}-subscribe-invalid-with-props", con(v), f"a send {subscribe(v, [(T + '/#/x', 1)], 2, '26 0001 61 0001 62')}", "a expect")
case(f, f"{p}-subscribe-nolocal-wildcard", sub_ready(v, "a", T + "/#", 4), f"a send {publish(v, T + '/x', 'x', 1, pid=1)}", "a expect")
case(f, f"{p}-publish-retained-with-props", con(v), f"a send {publish(v, T + '/r', 'x', 1, True, pid=1, pprops='03 0001 61 26 0001 61 0001 62')}",
     "a expect", sub_ready(v, "s", T + "/#", 1))
case(f, f"{p}-retained-message-expiry", con(v), f"a send {publish(v, T + '/r', 'x', 1, True, pid=1, pprops='02 00000001')}",
     "a expect", "wait 2200", sub_ready(v, "s", T + "/#", 1))
case(f, f"{p}-unsubscribe-user-property", con(v), f"a send a2[ 0001 [26 'a' 'b'] '{T}' ]", "a expect")
case(f, f"{p}-unsubscribe-forbidden-property", con(v), f"a send a2[ 0001 [01 01] '{T}' ]", "a expect")
case(f, f"{p}-max-qos-shown-on-subscribe", con(v), f"a send {subscribe(v, [(T + '/a', 2), (T + '/b', 1)], 3)}", "a expect")

# More flows, every version
for v in VERSIONS:
    f = f"v{v}_flows"
    p = f"v{v}-flow"
    case(f, f"{p}-overlap-first-match-lower-qos", con(v, "s"),
         f"s send {subscribe(v, [(T + '/+', 0), (T + '/#', 2)], 1)}", "s expect",
         con(v), f"a send {publish(v, T + '/o', 'x', 2, pid=2)}", "a expect", f"a send {ack('pubrel', 2)}", "a expect",
         "s expect")
    case(f, f"{p}-sys-qos2-then-pubrel", con(v), f"a send {publish(v, '$SYS/@@@@', 'x', 2, pid=4)}", "a expect",
         f"a send {ack('pubrel', 4)}", "a expect")
    case(f, f"{p}-sys-qos0-dropped", sub_ready(v, "s", "$SYS/@@@@/#", 0), con(v),
         f"a send {publish(v, '$SYS/@@@@/x', 'x')} c000", "a expect", "s send c000", "s expect")
    case(f, f"{p}-bridge-state-topic-allowed", sub_ready(v, "s", "$SYS/broker/connection/@@@@/state", 0), con(v),
         f"a send {publish(v, '$SYS/broker/connection/@@@@/state', '1', 1, pid=4)}", "a expect", "s expect")
    case(f, f"{p}-retained-to-several-subscribers", con(v), f"a send {publish(v, T + '/r', 'x', 1, True, pid=1)}", "a expect",
         sub_ready(v, "s1", T + "/#", 1), sub_ready(v, "s2", T + "/r", 0))
    case(f, f"{p}-qos1-redelivery-order-after-reconnect", con(v, "s", clean=False, cprops="11 0000003c" if v == V5 else ""),
         f"s send {subscribe(v, [(T + '/#', 1)], 1)}", "s expect",
         con(v), "a send " + " ".join(publish(v, T + '/n', str(i), 1, pid=i + 1) for i in range(3)), "a expect", "s expect",
         "s close", "wait 200", con(v, "s2", cid="s@@@@", clean=False, cprops="11 0000003c" if v == V5 else ""))
    case(f, f"{p}-unsubscribe-then-resubscribe-retained", con(v), f"a send {publish(v, T + '/r', 'x', 0, True)} c000", "a expect",
         sub_ready(v, "s", T + "/#", 0), f"s send {unsubscribe(v, [T + '/#'], 2)}", "s expect",
         f"s send {subscribe(v, [(T + '/#', 0)], 3)}", "s expect")
    case(f, f"{p}-publish-to-own-wildcard-qos2", sub_ready(v, "a", T + "/#", 2),
         f"a send {publish(v, T + '/s', 'me', 2, pid=6)}", "a expect", f"a send {ack('pubrel', 6)}", "a expect")
    case(f, f"{p}-qos2-beyond-20-unreleased", con(v),
         "a send " + " ".join(publish(v, T, str(i), 2, pid=i + 1) for i in range(25)), "a expect",
         "a send " + " ".join(ack('pubrel', i + 1) for i in range(25)), "a expect")
    case(f, f"{p}-pingreq-between-publishes", sub_ready(v, "s", T + "/#", 1), con(v),
         f"a send {publish(v, T + '/p', '1', 1, pid=1)} c000 {publish(v, T + '/p', '2', 1, pid=2)}", "a expect", "s expect")

v = V5
p = "v5"
f = "v5_flows"
case(f, f"{p}-flow-retained-with-subscription-id", con(v), f"a send {publish(v, T + '/r', 'x', 1, True, pid=1)}", "a expect",
     con(v, "s"), f"s send {subscribe(v, [(T + '/#', 1)], 1, '0b 2a')}", "s expect")
case(f, f"{p}-flow-retain-as-published-on-subscribe", con(v), f"a send {publish(v, T + '/r', 'x', 0, True)} c000", "a expect",
     sub_ready(v, "s", T + "/#", 8))
case(f, f"{p}-flow-will-delay-and-session-expiry-0", sub_ready(v, "s", T + "/#", 0),
     con(v, "a", will=(T + "/w", "now", 0, 0, "18 0000000a")), "a close", "s expect")
case(f, f"{p}-flow-shared-unsubscribe-stops", con(v, "s"), f"s send {subscribe(v, [('$share/g/' + T, 0)], 1)}", "s expect",
     f"s send {unsubscribe(v, ['$share/g/' + T], 2)}", "s expect", con(v), f"a send {publish(v, T, 'x')}", "s send c000", "s expect")
case(f, f"{p}-flow-shared-and-plain-same-client", con(v, "s"),
     f"s send {subscribe(v, [('$share/g/' + T, 1), (T, 0)], 1)}", "s expect", con(v), f"a send {publish(v, T, 'x', 1, pid=1)}",
     "a expect", "s expect")
case(f, f"{p}-flow-message-expiry-on-live-delivery", sub_ready(v, "s", T + "/#", 1), con(v),
     f"a send {publish(v, T + '/e', 'x', 1, pid=1, pprops='02 0000012c')}", "a expect", "s expect")
case(f, f"{p}-flow-user-properties-order-kept", sub_ready(v, "s", T + "/#", 0), con(v),
     f"a send {publish(v, T + '/u', 'x', pprops='26 0001 62 0001 32 26 0001 61 0001 31 26 0001 62 0001 33')}", "s expect")
case(f, f"{p}-flow-response-topic-and-correlation", sub_ready(v, "s", T + "/#", 0), con(v),
     f"a send {publish(v, T + '/q', 'x', pprops='08 0005 722f616263 09 0002 0102')}", "s expect")

case(f, f"{p}-flow-properties-in-sent-order", sub_ready(v, "s", T + "/#", 0), con(v),
     f"a send {publish(v, T + '/o', 'x', pprops='26 0001 6b 0001 76 03 0002 6374 01 01 09 0001 07 08 0003 722f72')}", "s expect")
case(f, f"{p}-flow-will-properties-in-sent-order", sub_ready(v, "s", T + "/#", 0),
     con(v, "a", will=(T + "/w", "gone", 0, 0, "26 0001 6b 0001 76 03 0002 6374 01 01")), "a close", "s expect")

# 3.1-specific
f = "v31_connect"
case(f, "v31-connect-id-long-accepted", con(V31, cid="abcdefghijklmnopqrstuvwxyz0123@@@@"))
case(f, "v31-connect-as-311-name", con(V31, name="MQTT"))
case(f, "v311-connect-as-31-name", con(V311, name="MQIsdp"))

total = 0
for file, blocks in FILES.items():
    with open(os.path.join(HERE, file + ".txt"), "w") as out:
        out.write(f"# Differential exchanges, generated by generate.py: edit that and run it again.\n\n")
        out.write("\n\n".join(blocks) + "\n")
    total += len(blocks)
print(f"{total} exchanges in {len(FILES)} files")
