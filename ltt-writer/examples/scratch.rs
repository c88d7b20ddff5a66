use ltt_writer::*;
fn main() {
    let out = std::env::args().nth(1).unwrap();
    let mut c = Catalog::new();
    let f = FieldDecl::new;
    let id = c.add_event(
        "probe_custom",
        vec![
            f("a", FieldType::int(8, false)),
            f("b", FieldType::int(16, true)),
            f("c", FieldType::hex(32)),
            f("d", FieldType::I64),
            f("e", FieldType::Text { len: 8 }),
            f("s", FieldType::Str),
            f("g", FieldType::IntArray { bits: 16, signed: false, base: Base::Dec, len: 3 }),
            f("h", FieldType::IntSeq { bits: 32, signed: true, base: Base::Dec }),
        ],
    ).unwrap();
    let cat2 = c.clone();
    let (w, mut ps) = TraceWriter::create(out.as_ref(), TraceConfig::new(1, c)).unwrap();
    let ctx = TaskCtx::new(1, 1, b"a");
    let p = &mut ps[0];
    let vals = [
        Value::U(255),
        Value::I(-2),
        Value::U(0xdead_beef),
        Value::I(i64::MIN),
        Value::Str(b"abcdefghijk"),
        Value::Str(b"h\xc3\xa9llo \xffbad"),
        Value::Ints(&[1, 2, 65535]),
        Value::Ints(&[(-1i64) as u64, 7]),
    ];
    for t in 0..4u64 {
    p.emit(id, 10*t+1, &ctx, &vals).unwrap();
    p.emit(id, 10*t+2, &ctx, &[Value::U(0), Value::I(0), Value::U(0), Value::I(0), Value::Str(b""),
        Value::Str(b"bad\xff\xfe"), Value::Ints(&[]), Value::Ints(&[])]).unwrap();
    }
    drop(ps);
    w.finish().unwrap();
    for e in ltt_writer::reader::read_trace(out.as_ref(), &cat2, HeaderKind::Compact).unwrap() { println!("{:?}", e.fields); }
}
