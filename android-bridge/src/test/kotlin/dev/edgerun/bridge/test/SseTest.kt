package dev.edgerun.bridge.test

import dev.edgerun.bridge.SseEvent
import dev.edgerun.bridge.SseReader
import java.io.ByteArrayInputStream
import java.io.InputStream
import java.io.PipedInputStream
import java.io.PipedOutputStream
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.assertNull

/** Hands out at most one byte per read, like a network that splits every packet. */
private class Trickle(bytes: ByteArray) : InputStream() {
    private val inner = ByteArrayInputStream(bytes)
    override fun read(): Int = inner.read()
    override fun read(b: ByteArray, off: Int, len: Int): Int = inner.read(b, off, minOf(len, 1))
}

private fun events(text: String, trickle: Boolean = false): List<SseEvent> {
    val bytes = text.toByteArray(Charsets.UTF_8)
    val reader = SseReader(if (trickle) Trickle(bytes) else ByteArrayInputStream(bytes))
    return generateSequence { reader.next() }.toList()
}

fun sseSuite() = Suite("sse").apply {
    test("data lines, blank-line separated, then [DONE]") {
        val got = events("data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n")
        assertEquals(listOf("{\"a\":1}", "{\"a\":2}", "[DONE]"), got.map { it.data })
    }

    test("CRLF line ends, comments, event names, no space after colon") {
        val got = events(": keep-alive\r\n\r\nevent: error\r\ndata:{\"x\":1}\r\n\r\nid: 7\r\ndata: y\r\n\r\n")
        assertEquals(listOf(SseEvent("error", "{\"x\":1}"), SseEvent(null, "y")), got)
    }

    test("multi-line data joins with newline") {
        assertEquals(listOf("a\nb\n"), events("data: a\ndata: b\ndata\n\n").map { it.data })
    }

    test("multi-byte UTF-8 split across reads stays whole") {
        val text = "data: {\"t\":\"日本 😀 é\"}\n\ndata: [DONE]\n\n"
        assertEquals(events(text).map { it.data }, events(text, trickle = true).map { it.data })
        assertEquals("{\"t\":\"日本 😀 é\"}", events(text, trickle = true)[0].data)
    }

    test("last event without trailing blank line, then end") {
        assertEquals(listOf("tail"), events("data: tail").map { it.data })
        assertNull(SseReader(ByteArrayInputStream(ByteArray(0))).next())
    }

    test("an event is returned as soon as its blank line arrives (no read-ahead)") {
        val sink = PipedOutputStream()
        val source = PipedInputStream(sink, 1 shl 16)
        val reader = SseReader(source)
        val pool = Executors.newSingleThreadExecutor()
        try {
            sink.write("data: first\n\n".toByteArray())
            sink.flush()
            // the writer stays open: a reader that waits to fill its buffer would block here forever
            val first = pool.submit<SseEvent?> { reader.next() }.get(5, TimeUnit.SECONDS)
            assertEquals("first", first?.data)
            sink.write("data: second\n\n".toByteArray())
            sink.close()
            assertEquals("second", pool.submit<SseEvent?> { reader.next() }.get(5, TimeUnit.SECONDS)?.data)
        } finally {
            pool.shutdownNow()
        }
    }
}
