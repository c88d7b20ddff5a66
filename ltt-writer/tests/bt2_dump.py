#!/usr/bin/python3
"""Read a CTF trace with babeltrace2's Python bindings and print one JSON
object per message on stdout (events, discarded-events, packet bounds)."""
import json
import sys

import bt2


def conv(f):
    if isinstance(f, bt2._StringFieldConst):
        return str(f)
    if isinstance(f, bt2._IntegerFieldConst):
        return int(f)
    if isinstance(f, bt2._ArrayFieldConst):
        return [conv(x) for x in f]
    if isinstance(f, bt2._StructureFieldConst):
        return {k: conv(v) for k, v in f.items()}
    if isinstance(f, bt2._RealFieldConst):
        return float(f)
    return repr(f)


def fc_desc(fc):
    if isinstance(fc, bt2._SignedIntegerFieldClassConst):
        return {"kind": "signed", "bits": fc.field_value_range, "base": int(fc.preferred_display_base)}
    if isinstance(fc, bt2._UnsignedIntegerFieldClassConst):
        return {"kind": "unsigned", "bits": fc.field_value_range, "base": int(fc.preferred_display_base)}
    if isinstance(fc, bt2._StringFieldClassConst):
        return {"kind": "string"}
    if isinstance(fc, bt2._StaticArrayFieldClassConst):
        return {"kind": "array", "len": fc.length, "elem": fc_desc(fc.element_field_class)}
    if isinstance(fc, bt2._DynamicArrayFieldClassConst):
        return {"kind": "sequence", "elem": fc_desc(fc.element_field_class)}
    if isinstance(fc, bt2._StructureFieldClassConst):
        return {"kind": "struct", "members": [[n, fc_desc(m.field_class)] for n, m in fc.items()]}
    return {"kind": type(fc).__name__}


def classes(path):
    """Print the event classes (and the stream's event context) once."""
    for msg in bt2.TraceCollectionMessageIterator(path):
        if type(msg) is bt2._StreamBeginningMessageConst:
            sc = msg.stream.cls
            ctx = sc.event_common_context_field_class
            print(json.dumps({"t": "context", "fc": fc_desc(ctx) if ctx is not None else None}))
            for ec in sc.values():
                pf = ec.payload_field_class
                print(json.dumps({"t": "class", "name": ec.name, "id": ec.id,
                                  "fc": fc_desc(pf) if pf is not None else None}))
            return


def main(path):
    if len(sys.argv) > 2 and sys.argv[2] == "--classes":
        classes(path)
        return
    it = bt2.TraceCollectionMessageIterator(path)
    for msg in it:
        if type(msg) is bt2._EventMessageConst:
            ev = msg.event
            out = {
                "t": "event",
                "name": ev.name,
                "ns": msg.default_clock_snapshot.ns_from_origin,
                "cycles": msg.default_clock_snapshot.value,
                "cpu": int(ev.packet.context_field["cpu_id"]),
                "stream": ev.stream.name if ev.stream.name else "",
                "ctx": conv(ev.common_context_field) if ev.common_context_field is not None else {},
                "fields": conv(ev.payload_field) if ev.payload_field is not None else {},
            }
        elif type(msg) is bt2._DiscardedEventsMessageConst:
            out = {"t": "discarded", "count": msg.count, "stream": msg.stream.name or ""}
        elif type(msg) is bt2._DiscardedPacketsMessageConst:
            out = {"t": "discarded_packets", "count": msg.count}
        elif type(msg) is bt2._PacketBeginningMessageConst:
            out = {"t": "packet", "ctx": conv(msg.packet.context_field)}
            if msg.packet.stream.cls.packets_have_beginning_default_clock_snapshot:
                out["begin"] = msg.default_clock_snapshot.value
        elif type(msg) is bt2._PacketEndMessageConst:
            out = {"t": "packet_end", "ctx": conv(msg.packet.context_field)}
            if msg.packet.stream.cls.packets_have_end_default_clock_snapshot:
                out["end"] = msg.default_clock_snapshot.value
        elif type(msg) is bt2._StreamBeginningMessageConst:
            cc = msg.stream.cls.default_clock_class
            env = {k: (int(v) if isinstance(v, bt2._IntegerValueConst) else str(v))
                   for k, v in msg.stream.trace.environment.items()}
            out = {"t": "stream", "name": msg.stream.name or "", "env": env,
                   "clock": {"name": cc.name, "freq": cc.frequency,
                             "offset_s": cc.offset.seconds, "offset_cycles": cc.offset.cycles,
                             "unix_epoch": cc.origin_is_unix_epoch}}
        else:
            continue
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
