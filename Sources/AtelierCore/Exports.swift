// The error model and wire types are shared with the guest agent, which does not link
// AtelierCore; every host module that imports AtelierCore sees them too.
@_exported import AtelierAgentAPI
