//! The rendered systemd unit runs the server under systemd as PID 1 (being written).
