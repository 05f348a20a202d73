"""SDP core (sans-I/O, stdlib only): parse/serialise (:mod:`.model`), WebRTC <-> plain
RTP rewriting (:mod:`.rewrite`), codec policy (:mod:`.policy`)."""
