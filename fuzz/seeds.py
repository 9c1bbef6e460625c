#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/: real messages as
PostgreSQL and its clients send them. Run from the repository root; the output is committed."""
import os
import struct

def msg(tag, body=b""):
    return tag + struct.pack("!i", len(body) + 4) + body

def cstr(s):
    return s.encode() + b"\0"

startup = struct.pack("!i", 0) + struct.pack("!i", 196608) + cstr("user") + cstr("app") + cstr("database") + cstr("app") + b"\0"
startup = struct.pack("!i", len(startup)) + startup[4:]
ssl = struct.pack("!ii", 8, 80877103)
cancel = struct.pack("!iiii", 16, 80877102, 1234, 5678)
parse = msg(b"P", cstr("s1") + cstr("SELECT $1::int; SET search_path = app") + struct.pack("!hi", 1, 23))
bind = msg(b"B", cstr("") + cstr("s1") + struct.pack("!hh", 0, 1) + struct.pack("!i", 1) + b"7" + struct.pack("!h", 0))
execute = msg(b"E", cstr("") + struct.pack("!i", 0))
sync = msg(b"S")
query = msg(b"Q", cstr("BEGIN; SELECT pg_advisory_lock(1); SET LOCAL x = 1; DEALLOCATE ALL"))
sasl = msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 32) + b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL")
close = msg(b"C", b"S" + cstr("s1"))
describe = msg(b"D", b"S" + cstr("s1"))
copy = msg(b"d", b"1\t2\n") + msg(b"c")

error = msg(b"E", b"SERROR\0C0A000\0Mcached plan must not change result type\0\0")
param = msg(b"S", cstr("TimeZone") + cstr("UTC"))
row = msg(b"D", struct.pack("!h", 2) + struct.pack("!i", 1) + b"1" + struct.pack("!i", -1))
auth_sasl = msg(b"R", struct.pack("!i", 10) + cstr("SCRAM-SHA-256") + b"\0")
auth_cont = msg(b"R", struct.pack("!i", 11) + b"r=abcdef,s=c2FsdA==,i=4096")
auth_ok = msg(b"R", struct.pack("!i", 0))
key = msg(b"K", struct.pack("!ii", 42, 4242))
ready = msg(b"Z", b"I")

seeds = {
    "frontend": [parse + bind + execute + sync, query, sasl, close + describe + sync, copy],
    "backend": [auth_sasl + auth_cont + auth_ok + param + key + ready, row + error + ready],
    "startup": [startup, ssl + startup, cancel],
    "scram": [b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL\0c=biws,r=fyko+d2lbbFgONRv9qkxdawLc2VydmVyTm9uY2U,p=AAAA",
              b"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"],
    "prepared": [parse + bind + execute + sync + b"\xff" + b"12CZ", query + b"\xff" + b"CZ",
                 close + parse + describe + sync + b"\xff" + b"31tTZ"],
    "tracker": [b"\x00Q\x01Z\x00P\x00B\x00E\x00S\x01C\x01Z", b"\x00E\x00S\x01G\x00d\x00c\x01Z"],
    "auth_watch": [b"\x05" + auth_sasl + auth_cont + auth_ok, b"\x01N" + msg(b"R", struct.pack("!i", 3))],
}
for target, items in seeds.items():
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, data in enumerate(items):
        with open(os.path.join(d, f"seed-{i}"), "wb") as f:
            f.write(data)
