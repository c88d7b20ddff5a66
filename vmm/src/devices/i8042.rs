//! A minimal i8042 keyboard controller: enough for Linux to probe it and for
//! `reboot=k` (command 0xfe, pulse the reset line) to end the VM.

use super::io::IoAction;
use crate::layout::{I8042_COMMAND_PORT, I8042_DATA_PORT};

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_RESET_CPU: u8 = 0xfe;
const STATUS_OUT_FULL: u8 = 0x01;
const SELF_TEST_OK: u8 = 0x55;

/// i8042 state: a one-byte output buffer and the controller config byte.
#[derive(Debug, Default)]
pub struct I8042 {
    out: Option<u8>,
    ctr: u8,
    expect_ctr: bool,
}

impl I8042 {
    /// Reads the data or status port.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            I8042_DATA_PORT => self.out.take().unwrap_or(0),
            I8042_COMMAND_PORT => {
                if self.out.is_some() {
                    STATUS_OUT_FULL
                } else {
                    0
                }
            }
            _ => 0xff,
        }
    }

    /// Writes the data or command port.
    pub fn write(&mut self, port: u16, v: u8) -> IoAction {
        match (port, v) {
            (I8042_COMMAND_PORT, CMD_RESET_CPU) => return IoAction::Reset,
            (I8042_COMMAND_PORT, CMD_READ_CTR) => self.out = Some(self.ctr),
            (I8042_COMMAND_PORT, CMD_WRITE_CTR) => self.expect_ctr = true,
            (I8042_COMMAND_PORT, CMD_SELF_TEST) => self.out = Some(SELF_TEST_OK),
            (I8042_DATA_PORT, v) if self.expect_ctr => {
                self.ctr = v;
                self.expect_ctr = false;
            }
            _ => {}
        }
        IoAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_self_test() {
        let mut k = I8042::default();
        assert_eq!(k.write(I8042_COMMAND_PORT, CMD_SELF_TEST), IoAction::None);
        assert_eq!(k.read(I8042_COMMAND_PORT), STATUS_OUT_FULL);
        assert_eq!(k.read(I8042_DATA_PORT), SELF_TEST_OK);
        assert_eq!(k.read(I8042_COMMAND_PORT), 0);
        assert_eq!(k.write(I8042_COMMAND_PORT, CMD_RESET_CPU), IoAction::Reset);
    }
}
