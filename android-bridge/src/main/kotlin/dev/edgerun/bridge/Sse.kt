package dev.edgerun.bridge

import java.io.BufferedInputStream
import java.io.ByteArrayOutputStream
import java.io.InputStream

/** One server-sent event: its `event:` name (null = "message") and its `data:` lines joined by '\n'. */
data class SseEvent(val event: String?, val data: String)

/**
 * Reads server-sent events (text/event-stream) from [input] as they arrive.
 *
 * Bytes are split into lines before UTF-8 decoding, so a multi-byte character split across network
 * packets is never garbled, and [next] returns as soon as an event's blank line arrives (no read-ahead
 * that would wait for more data). Comment lines (":") and unknown fields are ignored, as the spec says.
 */
class SseReader(input: InputStream) {
    private val input = if (input is BufferedInputStream) input else BufferedInputStream(input)
    private val line = ByteArrayOutputStream(256)

    /** The next event, or null at the end of the stream. */
    fun next(): SseEvent? {
        var event: String? = null
        val data = StringBuilder()
        var hasData = false
        while (true) {
            val l = readLine() ?: return if (hasData) SseEvent(event, data.toString()) else null
            if (l.isEmpty()) {
                if (hasData) return SseEvent(event, data.toString())
                event = null
                continue
            }
            if (l.startsWith(":")) continue
            val colon = l.indexOf(':')
            val field = if (colon < 0) l else l.substring(0, colon)
            var value = if (colon < 0) "" else l.substring(colon + 1)
            if (value.startsWith(" ")) value = value.substring(1)
            when (field) {
                "data" -> {
                    if (hasData) data.append('\n')
                    data.append(value)
                    hasData = true
                }
                "event" -> event = value
            }
        }
    }

    private fun readLine(): String? {
        line.reset()
        while (true) {
            val b = input.read()
            if (b < 0) return if (line.size() == 0) null else decode()
            if (b == '\n'.code) return decode()
            line.write(b)
        }
    }

    private fun decode(): String {
        val bytes = line.toByteArray()
        val n = if (bytes.isNotEmpty() && bytes[bytes.size - 1] == '\r'.code.toByte()) bytes.size - 1 else bytes.size
        return String(bytes, 0, n, Charsets.UTF_8)
    }
}
