"""callbridge's SIP registrar for agents' phones: REGISTER with digest auth per device, bindings
kept in the shared database so every node reaches every registered phone."""
