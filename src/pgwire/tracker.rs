//! When a server connection may change hands: the bookkeeping of ReadyForQuery messages
//! owed, unsynced extended-protocol messages, COPY IN, and the last transaction status.
//! Pure: fed the tags of the messages as they pass.

use super::messages::IDLE;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    /// ReadyForQuery messages the server still owes.
    pending: usize,
    /// Status byte of the last ReadyForQuery: I (idle), T (in a transaction), E (failed).
    status: u8,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// Syncs sent since the last Execute: the server ignores them if that Execute starts a
    /// COPY FROM STDIN.
    since_execute: usize,
    /// The client ended a COPY (CopyDone/CopyFail) after the last Execute: Syncs it sends
    /// after that are answered.
    copy_ended: bool,
    copy_in: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: 0,
            status: IDLE,
            unsynced: false,
            since_execute: 0,
            copy_ended: false,
            copy_in: false,
        }
    }
}

impl Tracker {
    /// A client message about to be sent to the server.
    pub fn client(&mut self, tag: u8) {
        match tag {
            // Simple query and function call: one ReadyForQuery each.
            b'Q' => {
                self.pending += 1;
                self.since_execute = 0;
                self.copy_ended = false;
            }
            b'F' => self.pending += 1,
            // Sync: one ReadyForQuery, except while COPY IN ignores it.
            b'S' if !self.copy_in => {
                self.pending += 1;
                self.unsynced = false;
                if !self.copy_ended {
                    self.since_execute += 1;
                }
            }
            b'E' => {
                self.unsynced = true;
                self.since_execute = 0;
                self.copy_ended = false;
            }
            b'P' | b'B' | b'D' | b'C' => self.unsynced = true,
            // CopyDone, CopyFail.
            b'c' | b'f' => {
                self.copy_in = false;
                self.copy_ended = true;
            }
            _ => {}
        }
    }

    /// A server message passing to the client; `status` is ReadyForQuery's byte.
    pub fn server(&mut self, tag: u8, status: u8) {
        match tag {
            b'Z' => {
                self.pending = self.pending.saturating_sub(1);
                self.status = status;
            }
            // CopyInResponse: the Syncs pipelined behind the Execute will be ignored.
            b'G' => {
                // Unless the client has already sent its CopyDone or CopyFail.
                self.copy_in = !self.copy_ended;
                self.pending -= self.since_execute.min(self.pending);
                self.since_execute = 0;
            }
            _ => {}
        }
    }

    /// Nothing owed, nothing half-sent, no transaction open: the connection is free.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && !self.copy_in && self.status == IDLE
    }

    /// Whether the client is between statements (a session-mode client that may be told to go).
    pub fn quiet(&self) -> bool {
        self.pending == 0 && !self.unsynced && !self.copy_in
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgwire::messages::IN_TRANSACTION;

    fn run(t: &mut Tracker, client: &[u8], server: &[(u8, u8)]) {
        for c in client {
            t.client(*c);
        }
        for (s, status) in server {
            t.server(*s, *status);
        }
    }

    #[test]
    fn a_simple_query_frees_the_connection_at_ready_for_query_idle() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[]);
        assert!(!t.idle());
        run(
            &mut t,
            b"",
            &[(b'T', 0), (b'D', 0), (b'C', 0), (b'Z', IDLE)],
        );
        assert!(t.idle());
    }

    #[test]
    fn an_open_transaction_keeps_it() {
        let mut t = Tracker::default();
        run(&mut t, b"Q", &[(b'C', 0), (b'Z', IN_TRANSACTION)]);
        assert!(!t.idle());
        assert!(t.quiet());
    }

    #[test]
    fn extended_messages_without_their_sync_keep_it() {
        let mut t = Tracker::default();
        // Q answered while Parse/Bind/Execute wait for their Sync.
        run(&mut t, b"QPBE", &[(b'Z', IDLE)]);
        assert!(!t.idle(), "unsynced extended messages");
        run(
            &mut t,
            b"S",
            &[(b'1', 0), (b'2', 0), (b'C', 0), (b'Z', IDLE)],
        );
        assert!(t.idle());
        // Parse/Describe/Flush: answered, but no Sync yet.
        run(&mut t, b"PDH", &[(b'1', 0), (b't', 0), (b'T', 0)]);
        assert!(!t.idle());
    }

    #[test]
    fn a_pipeline_with_several_syncs_waits_for_each() {
        let mut t = Tracker::default();
        run(&mut t, b"PBESPBESPBES", &[(b'Z', IDLE), (b'Z', IDLE)]);
        assert!(!t.idle());
        run(&mut t, b"", &[(b'Z', IDLE)]);
        assert!(t.idle());
    }

    #[test]
    fn copy_in_over_the_extended_protocol_is_counted_right() {
        let mut t = Tracker::default();
        // Bind/Execute/Sync pipelined; the server answers CopyInResponse and ignores that Sync.
        run(&mut t, b"PBES", &[(b'1', 0), (b'2', 0), (b'G', 0)]);
        assert!(!t.idle());
        run(&mut t, b"ddcS", &[(b'C', 0), (b'Z', IDLE)]);
        assert!(t.idle());
        // All of it pipelined: only the Sync sent before CopyDone is ignored.
        run(&mut t, b"PBESddcS", &[(b'1', 0), (b'2', 0), (b'G', 0)]);
        assert!(!t.idle());
        run(&mut t, b"", &[(b'C', 0), (b'Z', IDLE)]);
        assert!(t.idle());
        // Simple-protocol COPY.
        run(&mut t, b"Q", &[(b'G', 0)]);
        run(&mut t, b"dc", &[(b'C', 0), (b'Z', IDLE)]);
        assert!(t.idle());
    }

    #[test]
    fn a_function_call_waits_for_its_ready_for_query() {
        let mut t = Tracker::default();
        run(&mut t, b"F", &[(b'V', 0)]);
        assert!(!t.idle());
        run(&mut t, b"", &[(b'Z', IDLE)]);
        assert!(t.idle());
    }
}
