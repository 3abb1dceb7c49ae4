import Testing

/// Every test that boots VMs, one at a time: the machine has two cores, and a test that
/// checks "nothing is left on the host" must not see another test's VMs and ports.
@Suite(.serialized) struct VMTests {}
