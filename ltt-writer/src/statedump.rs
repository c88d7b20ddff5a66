//! lttng-modules 2.13's statedump events besides the process state
//! (`instrumentation/events/lttng-statedump.h`): names, field names, order,
//! sizes, signedness, byte orders and display bases as it declares them
//! (`address_ipv4` is big-endian, `ctf_integer_network_hex`: 127.0.0.1 is
//! 0x7f000001 to readers).

use crate::catalog::{Base, Catalog, CatalogError, FieldDecl, FieldType as T};
use crate::producer::{ProduceError, Producer, TaskCtx, Value};

pub const FILE_DESCRIPTOR: &str = "lttng_statedump_file_descriptor";
pub const VM_MAP: &str = "lttng_statedump_vm_map";
pub const INTERRUPT: &str = "lttng_statedump_interrupt";
pub const CPU_TOPOLOGY: &str = "lttng_statedump_cpu_topology";
pub const BLOCK_DEVICE: &str = "lttng_statedump_block_device";
pub const NETWORK_INTERFACE: &str = "lttng_statedump_network_interface";

/// The events and their fields, in lttng-modules' order.
pub fn events() -> Vec<(&'static str, Vec<FieldDecl>)> {
    let f = FieldDecl::new;
    let oct32 = T::Int {
        bits: 32,
        signed: false,
        base: Base::Oct,
    };
    vec![
        (
            FILE_DESCRIPTOR,
            vec![
                f("file_table_address", T::hex(64)),
                f("fd", T::I32),
                f("flags", oct32),
                f("fmode", T::hex(32)),
                f("filename", T::Str),
            ],
        ),
        (
            VM_MAP,
            vec![
                f("pid", T::I32),
                f("start", T::hex(64)),
                f("end", T::hex(64)),
                f("flags", T::hex(64)),
                f("inode", T::U64),
                f("pgoff", T::U64),
            ],
        ),
        (
            NETWORK_INTERFACE,
            vec![f("name", T::Str), f("address_ipv4", T::net_hex(32))],
        ),
        (BLOCK_DEVICE, vec![f("dev", T::U32), f("diskname", T::Str)]),
        (
            INTERRUPT,
            vec![
                f("irq", T::U32),
                f("name", T::Str),
                f("action", T::Str),
                f("tid", T::I32),
            ],
        ),
        (
            CPU_TOPOLOGY,
            vec![
                f("architecture", T::Str),
                f("cpu_id", T::int(16, false)),
                f("vendor", T::Str),
                f("family", T::int(8, false)),
                f("model", T::int(8, false)),
                f("model_name", T::Str),
                f("physical_id", T::int(16, false)),
                f("core_id", T::int(16, false)),
                f("cores", T::int(16, false)),
            ],
        ),
    ]
}

impl Catalog {
    /// Declares [`events`].
    pub fn add_statedump_events(&mut self) -> Result<(), CatalogError> {
        for (name, fields) in events() {
            self.add_event(name, fields)?;
        }
        Ok(())
    }
}

impl Producer {
    /// Writes statedump event `name` (one of [`events`]) with `values` in
    /// its field order. Looked up by name: a statedump is written once.
    pub fn statedump_event(
        &mut self,
        name: &'static str,
        ts: u64,
        ctx: &TaskCtx,
        values: &[Value<'_>],
    ) -> Result<(), ProduceError> {
        let id = self
            .catalog()
            .id_of(name)
            .ok_or(ProduceError::NotDeclared(name))?;
        self.emit(id, ts, ctx, values)
    }
}
