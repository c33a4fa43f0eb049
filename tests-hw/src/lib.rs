//! Hardware-level test harness: network namespaces, veth pairs and real processes.
