"""The two interceptor chains: the client's (outbound) and the server's (inbound), one concern a module.

The bases and their inputs are in :mod:`.outbound` and :mod:`.inbound`, the orders in
:mod:`.client_chain` and :mod:`.server_chain`. Nothing is imported here, so that the client's
modules can be imported without the server's.
"""
