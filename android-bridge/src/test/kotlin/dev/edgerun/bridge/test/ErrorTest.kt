package dev.edgerun.bridge.test

import dev.edgerun.bridge.ChatMessage
import dev.edgerun.bridge.EdgeClient
import dev.edgerun.bridge.EdgeException
import dev.edgerun.bridge.PngSize
import java.net.InetAddress
import java.net.ServerSocket
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** Every subclass named: adding one without handling it here stops the compilation. */
private fun kind(e: EdgeException): String = when (e) {
    is EdgeException.Unreachable -> "unreachable"
    is EdgeException.Timeout -> "timeout"
    is EdgeException.Busy -> "busy"
    is EdgeException.BadRequest -> "bad-request"
    is EdgeException.Unauthorized -> "unauthorized"
    is EdgeException.NotFound -> "not-found"
    is EdgeException.ServerError -> "server-error"
    is EdgeException.Cancelled -> "cancelled"
    is EdgeException.Protocol -> "protocol"
}

private fun openAiError(message: String, type: String, param: String? = null, code: String? = null) =
    dev.edgerun.bridge.Json.stringify(
        mapOf("error" to mapOf("message" to message, "type" to type, "param" to param, "code" to code)),
    )

fun errorSuite() = Suite("errors").apply {
    test("400 OpenAI body -> BadRequest with the server's message, param and code") {
        val msg = "`temperature` must be between 0 and 2, got -1. Use 0 for greedy decoding."
        val e = EdgeException.fromHttp(400, openAiError(msg, "invalid_request_error", "temperature"), null)
        assertIs<EdgeException.BadRequest>(e)
        assertEquals(msg, e.serverMessage)
        assertEquals(msg, e.message)
        assertEquals("temperature", e.param)
        assertEquals(400, e.status)
    }

    test("422 FastAPI validation body -> BadRequest naming the field") {
        val body = """{"detail":[{"type":"missing","loc":["body","messages"],"msg":"Field required","input":{}}]}"""
        val e = EdgeException.fromHttp(422, body, null)
        assertIs<EdgeException.BadRequest>(e)
        assertEquals("body.messages: Field required", e.serverMessage)
    }

    test("401 -> Unauthorized, 404 -> NotFound, 500 -> ServerError") {
        assertEquals("unauthorized", kind(EdgeException.fromHttp(401, openAiError("bad key", "authentication_error"), null)))
        val nf = EdgeException.fromHttp(404, openAiError("no model 'x'", "invalid_request_error", "model"), null)
        assertIs<EdgeException.NotFound>(nf)
        assertEquals("model", nf.param)
        val se = EdgeException.fromHttp(500, "Internal Server Error", null)
        assertIs<EdgeException.ServerError>(se)
        assertEquals("HTTP 500: Internal Server Error", se.serverMessage)
        assertEquals("server-error", kind(EdgeException.fromHttp(507, "", null)))
    }

    test("503 -> Busy with Retry-After seconds") {
        val e = EdgeException.fromHttp(503, openAiError("queue full (8 jobs)", "server_error"), "2")
        assertIs<EdgeException.Busy>(e)
        assertEquals(2.0, e.retryAfterSeconds)
        assertEquals("queue full (8 jobs)", e.serverMessage)
        assertEquals(0.5, (EdgeException.fromHttp(503, "", " 0.5 ") as EdgeException.Busy).retryAfterSeconds)
        assertNull((EdgeException.fromHttp(503, "", "Wed, 21 Oct 2015 07:28:00 GMT") as EdgeException.Busy).retryAfterSeconds)
        assertNull((EdgeException.fromHttp(503, "", null) as EdgeException.Busy).retryAfterSeconds)
        assertNull(EdgeException.parseRetryAfter("-1"))
    }

    test("PNG size reader") {
        val png = java.io.ByteArrayOutputStream().also {
            javax.imageio.ImageIO.write(java.awt.image.BufferedImage(37, 11, java.awt.image.BufferedImage.TYPE_INT_RGB), "png", it)
        }.toByteArray()
        assertEquals(PngSize(37, 11), PngSize.of(png))
        assertNull(PngSize.of("GIF89a, not a png at all".toByteArray()))
        assertNull(PngSize.of(ByteArray(3)))
    }
}

/** A port on loopback that nothing listens on (bound once, then closed). */
fun closedPort(): Int = ServerSocket(0, 1, InetAddress.getLoopbackAddress()).use { it.localPort }

fun transportSuite() = Suite("transport").apply {
    test("bad arguments fail in the caller, before any network use") {
        assertFailsWith<IllegalArgumentException> { EdgeClient("127.0.0.1:8080") }
        val client = EdgeClient("http://127.0.0.1:${closedPort()}")
        assertFailsWith<IllegalArgumentException> { client.chat(emptyList()) }
        assertFailsWith<IllegalArgumentException> { client.chatStream(emptyList()) { } }
    }

    test("closed port -> Unreachable, fast, for every call") {
        val client = EdgeClient("http://127.0.0.1:${closedPort()}")
        val hi = listOf(ChatMessage.user("hi"))
        val calls = listOf<Pair<String, () -> Unit>>(
            "health" to { client.health() }, "models" to { client.models() }, "chat" to { client.chat(hi) },
            "imagine" to { client.imagine("x") }, "segment" to { client.segment(ByteArray(8)) },
        )
        for ((name, call) in calls) {
            val t0 = System.nanoTime()
            val e = assertFailsWith<EdgeException.Unreachable>(name) { call() }
            val ms = (System.nanoTime() - t0) / 1_000_000
            assertTrue(ms < 1000, "$name took $ms ms to fail")
            assertTrue(e.message!!.contains(client.baseUrl), e.message)
        }
        report("unreachable_message", EdgeException.Unreachable(client.baseUrl, java.net.ConnectException("Connection refused")).message!!)
    }

    test("closed port -> stream ends with Unreachable via await and onDone") {
        val client = EdgeClient("http://127.0.0.1:${closedPort()}")
        val done = CountDownLatch(1)
        val seen = AtomicReference<Throwable?>()
        val t0 = System.nanoTime()
        val stream = client.chatStream(listOf(ChatMessage.user("hi")), onDone = { _, err -> seen.set(err); done.countDown() }) {
            throw AssertionError("no token can arrive from a closed port")
        }
        assertFailsWith<EdgeException.Unreachable> { stream.await(5, TimeUnit.SECONDS) }
        assertTrue(done.await(5, TimeUnit.SECONDS))
        assertIs<EdgeException.Unreachable>(seen.get())
        assertTrue(stream.isDone)
        assertTrue((System.nanoTime() - t0) / 1_000_000 < 1000)
    }
}
