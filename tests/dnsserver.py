"""A tiny authoritative DNS server for tests: one zone, UDP and TCP on 127.0.0.1.

    with LoopbackDNS(zone_text, origin="example.com.") as server:
        ... resolve against 127.0.0.1:server.port ...

The zone text is BIND master-file syntax (a fragment is enough: no SOA or NS needed). Answers
are authoritative: the records of the name and type asked (following CNAMEs inside the zone),
NOERROR with no answer for a name that exists without that type (or is an empty
non-terminal such as `_tcp.example.com`), NXDOMAIN for a name that does not exist, REFUSED
outside the zone. A UDP answer larger than the client's buffer is truncated (TC) so the client
retries over TCP, as with a real server.
"""

import socket
import socketserver
import struct
import threading
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone


class LoopbackDNS:
    def __init__(self, zone_text: str, origin: str = "example.com.") -> None:
        self.origin = dns.name.from_text(origin)
        self.zone = dns.zone.from_text(
            zone_text, origin=self.origin, relativize=False, check_origin=False
        )
        self.port = 0
        self.queries: list[tuple[str, str, str]] = []  # (transport, name, type) as received
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> "LoopbackDNS":
        # UDP on an ephemeral port, then TCP on the same number (retry if that one is taken).
        for _ in range(20):
            udp = _UDPServer(("127.0.0.1", 0), _UDPHandler, self)
            port = udp.server_address[1]
            try:
                tcp = _TCPServer(("127.0.0.1", port), _TCPHandler, self)
            except OSError:
                udp.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            break
        else:
            raise RuntimeError("no free port for both UDP and TCP")
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> "LoopbackDNS":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- answering ---------------------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        self.queries.append(
            (transport, question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
        )
        self._resolve(question.name, question.rdtype, response)
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _resolve(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> None:
        if not qname.is_subdomain(self.origin):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return
        for _ in range(8):  # CNAME chain inside the zone
            node = self.zone.get_node(qname)
            if node is None:
                if not self._is_empty_non_terminal(qname):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is not None:
                response.answer.append(_rrset(qname, rdataset))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                return
            response.answer.append(_rrset(qname, cname))
            qname = cname[0].target
            if not qname.is_subdomain(self.origin):
                return

    def _is_empty_non_terminal(self, qname: dns.name.Name) -> bool:
        return any(name != qname and name.is_subdomain(qname) for name in self.zone.nodes)


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, dns_server: LoopbackDNS) -> None:
        self.dns = dns_server
        super().__init__(address, handler)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, dns_server: LoopbackDNS) -> None:
        self.dns = dns_server
        super().__init__(address, handler)


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.answer(data, "udp")
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(5)
        try:
            while True:
                header = _read(conn, 2)
                if header is None:
                    return
                wire = _read(conn, struct.unpack("!H", header)[0])
                if wire is None:
                    return
                reply = self.server.dns.answer(wire, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _read(conn: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data
