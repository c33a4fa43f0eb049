//! gatelet-agent: the data plane.
