package dev.edgerun.bridge

import java.io.BufferedInputStream
import java.io.ByteArrayOutputStream
import java.io.Closeable
import java.io.IOException
import java.io.InputStream
import java.net.InetSocketAddress
import java.net.Socket
import java.net.URL
import javax.net.ssl.SSLSocket
import javax.net.ssl.SSLSocketFactory

/**
 * One HTTP/1.1 request over a socket this class owns, for streamed answers.
 *
 * Why not HttpURLConnection here: the JDK's `disconnect()` waits for the reading thread to receive its
 * next chunk (both hold the same stream lock), so cancelling a stream blocked the caller until the
 * runtime produced another token, and the runtime only noticed the client had gone a token or two later.
 * Closing our own socket unblocks the reader at once and the runtime sees the disconnect at once.
 */
internal class StreamHttp private constructor(private val socket: Socket) : Closeable {
    private val input = BufferedInputStream(socket.getInputStream(), 8192)

    /** Status code of the answer (read by [readHead]). */
    var status: Int = 0
        private set

    /** Answer headers, names lower-cased. */
    val headers = HashMap<String, String>()

    /** Close the socket: a thread blocked reading the answer fails at once. Safe from any thread. */
    override fun close() {
        try {
            socket.close()
        } catch (_: IOException) {
        }
    }

    /** Read the status line and headers (skipping 1xx answers). */
    fun readHead() {
        while (true) {
            val statusLine = readLine() ?: throw IOException("connection closed before the status line")
            val parts = statusLine.split(' ', limit = 3)
            status = parts.getOrNull(1)?.toIntOrNull()
                ?: throw EdgeException.Protocol("not an HTTP answer: ${statusLine.take(100)}")
            headers.clear()
            while (true) {
                val line = readLine() ?: throw IOException("connection closed inside the headers")
                if (line.isEmpty()) break
                val colon = line.indexOf(':')
                if (colon > 0) headers[line.substring(0, colon).trim().lowercase()] = line.substring(colon + 1).trim()
            }
            if (status !in 100..199) return
        }
    }

    /** The answer body, de-chunked; ends at the end of the body. */
    fun body(): InputStream = when {
        headers["transfer-encoding"]?.lowercase()?.contains("chunked") == true -> ChunkedBody(input)
        headers["content-length"] != null -> LimitedBody(input, headers["content-length"]!!.toLong())
        else -> input // Connection: close delimits the body
    }

    private fun readLine(): String? {
        val buf = ByteArrayOutputStream(128)
        while (true) {
            val b = input.read()
            if (b < 0) return if (buf.size() == 0) null else buf.toString("ISO-8859-1")
            if (b == '\n'.code) {
                val s = buf.toString("ISO-8859-1")
                return if (s.endsWith("\r")) s.dropLast(1) else s
            }
            if (buf.size() > 16_384) throw EdgeException.Protocol("HTTP header line longer than 16 KiB")
            buf.write(b)
        }
    }

    companion object {
        /**
         * Connect to [url] and send the request. Connection failures throw [java.net.ConnectException] and
         * friends (the caller maps them); [onSocket] receives the socket as soon as it exists so a concurrent
         * cancel can close it even during the connect.
         */
        fun open(
            url: URL, method: String, headers: Map<String, String>, body: ByteArray?,
            connectTimeoutMs: Int, readTimeoutMs: Int, onSocket: (Closeable) -> Unit,
        ): StreamHttp {
            val https = url.protocol == "https"
            val port = if (url.port > 0) url.port else if (https) 443 else 80
            val plain = Socket()
            onSocket(Closeable { plain.close() })
            plain.connect(InetSocketAddress(url.host, port), connectTimeoutMs)
            val socket = if (https) {
                val ssl = (SSLSocketFactory.getDefault() as SSLSocketFactory)
                    .createSocket(plain, url.host, port, true) as SSLSocket
                ssl.sslParameters = ssl.sslParameters.also { it.endpointIdentificationAlgorithm = "HTTPS" }
                ssl.startHandshake()
                ssl
            } else {
                plain
            }
            socket.soTimeout = readTimeoutMs
            socket.tcpNoDelay = true
            val http = StreamHttp(socket)
            onSocket(http)
            val target = (url.path.ifEmpty { "/" }) + (url.query?.let { "?$it" } ?: "")
            val hostHeader = if (url.port > 0) "${url.host}:${url.port}" else url.host
            val head = StringBuilder()
                .append(method).append(' ').append(target).append(" HTTP/1.1\r\n")
                .append("Host: ").append(hostHeader).append("\r\n")
                .append("Connection: close\r\n")
            for ((k, v) in headers) head.append(k).append(": ").append(v).append("\r\n")
            if (body != null) head.append("Content-Length: ").append(body.size).append("\r\n")
            head.append("\r\n")
            val out = socket.getOutputStream()
            out.write(head.toString().toByteArray(Charsets.UTF_8))
            if (body != null) out.write(body)
            out.flush()
            return http
        }
    }
}

/** `Transfer-Encoding: chunked` decoding that returns data as soon as it arrives. */
internal class ChunkedBody(private val input: InputStream) : InputStream() {
    private var remaining = 0L
    private var done = false

    override fun read(): Int {
        val one = ByteArray(1)
        return if (read(one, 0, 1) < 0) -1 else one[0].toInt() and 0xFF
    }

    override fun read(b: ByteArray, off: Int, len: Int): Int {
        if (len == 0) return 0
        if (done) return -1
        if (remaining == 0L) {
            remaining = nextChunkSize()
            if (remaining == 0L) {
                while (line().isNotEmpty()) { } // trailers, then the blank line
                done = true
                return -1
            }
        }
        val n = input.read(b, off, minOf(len.toLong(), remaining).toInt())
        if (n < 0) throw IOException("connection closed inside a chunk")
        remaining -= n
        if (remaining == 0L && line().isNotEmpty()) throw EdgeException.Protocol("chunk not followed by CRLF")
        return n
    }

    private fun nextChunkSize(): Long {
        val l = line().substringBefore(';').trim()
        return l.toLongOrNull(16)?.takeIf { it >= 0 } ?: throw EdgeException.Protocol("bad chunk size line \"${l.take(40)}\"")
    }

    private fun line(): String {
        val sb = StringBuilder()
        while (true) {
            val c = input.read()
            if (c < 0) throw IOException("connection closed inside the chunked body")
            if (c == '\n'.code) return sb.toString().trimEnd('\r')
            if (sb.length > 1024) throw EdgeException.Protocol("chunk header line too long")
            sb.append(c.toChar())
        }
    }
}

/** A body of a known Content-Length. */
internal class LimitedBody(private val input: InputStream, private var left: Long) : InputStream() {
    override fun read(): Int {
        if (left <= 0) return -1
        val c = input.read()
        if (c >= 0) left--
        return c
    }

    override fun read(b: ByteArray, off: Int, len: Int): Int {
        if (left <= 0) return -1
        val n = input.read(b, off, minOf(len.toLong(), left).toInt())
        if (n > 0) left -= n
        return n
    }
}
