package dev.edgerun.bridge.test

import dev.edgerun.bridge.Box
import dev.edgerun.bridge.ChatMessage
import dev.edgerun.bridge.ChatOptions
import dev.edgerun.bridge.EdgeClient
import dev.edgerun.bridge.EdgeException
import dev.edgerun.bridge.ImageOptions
import dev.edgerun.bridge.ModelInfo
import dev.edgerun.bridge.PngSize
import dev.edgerun.bridge.SegmentOptions
import dev.edgerun.bridge.SegmentPoint
import dev.edgerun.bridge.Tool
import java.awt.image.BufferedImage
import java.io.ByteArrayOutputStream
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.atomic.AtomicReference
import javax.imageio.ImageIO
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertNotNull
import kotlin.test.assertTrue

private val GREEDY = ChatOptions(maxTokens = 24, temperature = 0.0, seed = 42)
private val QUESTION = listOf(
    ChatMessage.system("You are a concise assistant."),
    ChatMessage.user("Name three colours of the rainbow."),
)

private fun ms(t0: Long) = (System.nanoTime() - t0) / 1_000_000

/** One value of the runtime's Prometheus `/metrics` (test-only: the bridge itself does not read metrics);
 *  behind `--api-key` /metrics wants the key like every other route but a minimal /health. */
private fun metric(url: String, name: String, apiKey: String?): Double {
    val conn = java.net.URL("$url/metrics").openConnection()
    if (apiKey != null) conn.setRequestProperty("Authorization", "Bearer $apiKey")
    val text = conn.getInputStream().use { it.readBytes().toString(Charsets.UTF_8) }
    val line = text.lineSequence().firstOrNull { it.startsWith("$name ") } ?: throw AssertionError("/metrics has no $name")
    return line.substringAfter(' ').trim().toDouble()
}

/** Tests against a running `edge-run serve` at [url] (started with `--api-key [apiKey]` when given). */
fun liveSuite(url: String, apiKey: String?) = Suite("live").apply {
    val client = EdgeClient(url, apiKey = apiKey, readTimeoutMs = 120_000)
    val models: List<ModelInfo> by lazy { client.models() }
    fun modelFor(task: String): ModelInfo? = models.firstOrNull { it.task == task }

    test("health is ok") {
        val h = client.health()
        assertTrue(h.ok, "health: ${h.raw}")
    }

    test("models lists the default chat model") {
        val chat = models.firstOrNull { it.id == EdgeClient.DEFAULT_CHAT_MODEL }
        assertNotNull(chat, "models: ${models.map { it.id }}")
        assertEquals("chat", chat.task)
        report("models", models.joinToString(",") { "${it.id}:${it.task}" })
    }

    test("streamed tokens concatenate to the non-streamed answer (greedy)") {
        // Warm-up: the runtime reuses a cached prompt prefix, and llama.cpp's first full prefill differs
        // numerically from a cached one (batch size), so the very first answer may differ from later ones
        // in late tokens. After one identical request both calls below take the same cached path.
        assertTrue(client.chat(QUESTION, GREEDY).isNotBlank())
        val full = client.chatCompletion(QUESTION, GREEDY)
        assertTrue(full.text.isNotBlank(), "empty answer")
        val tokens = Collections.synchronizedList(ArrayList<String>())
        val threads = Collections.synchronizedSet(HashSet<String>())
        val stream = client.chatStream(QUESTION, GREEDY) { tok ->
            tokens += tok
            threads += Thread.currentThread().name
        }
        val streamed = stream.await(60, TimeUnit.SECONDS)
        assertEquals(full.text, streamed)
        assertEquals(full.text, tokens.joinToString(""))
        assertTrue(tokens.size >= 2, "the answer came in ${tokens.size} piece(s), not streamed")
        assertEquals(setOf("edge-run-chat-stream"), threads, "tokens are delivered on the stream's thread")
        assertTrue(stream.isDone && !stream.isCancelled)
        val usage = assertNotNull(full.usage)
        assertTrue(usage.completionTokens in 1..24 && usage.promptTokens > 0, "usage: $usage")
        report("chat_text", full.text)
    }

    test("tool call round trip: a forced call, its seed, the result fed back") {
        val weather = Tool("get_weather", "The weather in a city now", mapOf(
            "type" to "object",
            "properties" to mapOf("city" to mapOf("type" to "string", "maxLength" to 40)),
            "required" to listOf("city"),
        ))
        val ask = listOf(ChatMessage.user("What's the weather in Oslo?"))
        val opts = ChatOptions(maxTokens = 64, tools = listOf(weather), toolChoice = "get_weather", seed = 11)
        val answer = client.chatCompletion(ask, opts)
        assertEquals("tool_calls", answer.finishReason)
        assertEquals(11L, answer.seed)
        val call = answer.toolCalls.single()
        assertEquals("get_weather", call.name)
        assertTrue(call.id.startsWith("call_"), "id: ${call.id}")
        assertIs<String>(call.argumentsMap()["city"], "arguments: ${call.arguments}")
        report("tool_call", dev.edgerun.bridge.Json.stringify(mapOf("name" to call.name, "arguments" to call.arguments)))
        val history = ask + ChatMessage.assistantCalls(answer.toolCalls) + ChatMessage.tool(call.id, "12 degrees, rain")
        val after = client.chatCompletion(history, ChatOptions(maxTokens = 24, temperature = 0.0,
            tools = listOf(weather), toolChoice = "none"))
        assertTrue(after.toolCalls.isEmpty() && after.text.isNotBlank(), "answer: $after")
        val drawn = client.chatCompletion(ask, ChatOptions(maxTokens = 4))
        assertNotNull(drawn.seed, "no seed in the answer without one")
    }

    test("cancel stops a long stream at once and frees the runtime") {
        val long = ChatOptions(maxTokens = 400, temperature = 0.0, seed = 1)
        val ask = listOf(ChatMessage.user("Count from 1 to 300, one number per line."))
        val three = CountDownLatch(3)
        val count = AtomicInteger()
        val done = CountDownLatch(1)
        val doneError = AtomicReference<Throwable?>()
        val tokensBefore = metric(url, "edge_tokens_total", apiKey)
        val t0 = System.nanoTime()
        val stream = client.chatStream(ask, long, onDone = { _, e -> doneError.set(e); done.countDown() }) {
            count.incrementAndGet()
            three.countDown()
        }
        assertTrue(three.await(60, TimeUnit.SECONDS), "no 3 tokens within 60 s")
        val tCancel = System.nanoTime()
        stream.cancel()
        val cancelCallMs = ms(tCancel)
        assertTrue(cancelCallMs < 500, "cancel() blocked its caller for $cancelCallMs ms")
        val atCancel = count.get()
        val e = assertFailsWith<EdgeException.Cancelled> { stream.await(5, TimeUnit.SECONDS) }
        val cancelMs = ms(tCancel)
        assertTrue(cancelMs < 2000, "cancel took $cancelMs ms to end the stream")
        assertTrue(done.await(5, TimeUnit.SECONDS))
        assertIs<EdgeException.Cancelled>(doneError.get())
        Thread.sleep(300)
        assertEquals(atCancel, count.get(), "a token arrived after cancel() returned")
        assertTrue(e.partialText.isNotEmpty())
        assertEquals(stream.textSoFar, e.partialText)
        assertTrue(atCancel < 400)
        stream.cancel() // idempotent
        // the runtime stopped the job too (the client went away): nothing runs and few tokens were made after cancel
        val deadline = System.nanoTime() + 15_000_000_000L
        while (metric(url, "edge_running_jobs", apiKey) > 0 && System.nanoTime() < deadline) Thread.sleep(50)
        assertEquals(0.0, metric(url, "edge_running_jobs", apiKey), "the cancelled job still runs on the server")
        val made = metric(url, "edge_tokens_total", apiKey) - tokensBefore
        assertTrue(made < atCancel + 40, "the server made $made tokens for a stream cancelled after $atCancel")
        // the runtime is free again: a short request completes (a job left running would hold the model)
        val t1 = System.nanoTime()
        assertTrue(client.chat(QUESTION, ChatOptions(maxTokens = 4, temperature = 0.0)).isNotEmpty())
        report("cancel", "tokens=$atCancel server_tokens=$made cancel_ms=$cancelMs stream_ms=${ms(t0)} next_chat_ms=${ms(t1)}")
    }

    test("bad request -> BadRequest carrying the server's message") {
        val bad = ChatOptions(maxTokens = 8, temperature = -1.0)
        val e = assertFailsWith<EdgeException.BadRequest> { client.chat(QUESTION, bad) }
        assertEquals(400, e.status)
        assertTrue(e.serverMessage.contains("temperature"), "message does not name the argument: ${e.serverMessage}")
        assertEquals(e.serverMessage, e.message)
        report("bad_request_message", e.serverMessage)
        // the same error through a stream: it is an HTTP 400 before any event
        val s = client.chatStream(QUESTION, bad) { throw AssertionError("no token expected") }
        val se = assertFailsWith<EdgeException.BadRequest> { s.await(30, TimeUnit.SECONDS) }
        assertEquals(e.serverMessage, se.serverMessage)
    }

    test("unknown model -> NotFound") {
        val e = assertFailsWith<EdgeException.NotFound> {
            client.chat(QUESTION, GREEDY.copy(model = "no-such-model-xyz"))
        }
        assertTrue(e.serverMessage.contains("no-such-model-xyz"), e.serverMessage)
    }

    test("wrong or missing API key -> Unauthorized") {
        if (apiKey == null) skip("the server runs without --api-key")
        for (key in listOf(null, apiKey + "-wrong")) {
            val other = EdgeClient(url, apiKey = key)
            assertFailsWith<EdgeException.Unauthorized>("key=$key") { other.chat(QUESTION, GREEDY) }
            assertFailsWith<EdgeException.Unauthorized>("key=$key") { other.models() }
        }
    }

    test("image round trip: a PNG of the asked size") {
        val model = modelFor("image") ?: skip("the server lists no image model")
        val (w, h) = 64 to 64
        val t0 = System.nanoTime()
        val png = client.imagine("a red apple on a table", ImageOptions(model = model.id, width = w, height = h, steps = 2, seed = 3))
        assertEquals(PngSize(w, h), PngSize.of(png))
        val img = assertNotNull(ImageIO.read(png.inputStream()), "ImageIO cannot decode the PNG")
        assertEquals(w, img.width)
        val again = client.imagine("a red apple on a table", ImageOptions(model = model.id, width = w, height = h, steps = 2, seed = 3))
        assertTrue(png.contentEquals(again), "same seed, different image")
        report("image", "model=${model.id} ${w}x$h bytes=${png.size} ms=${ms(t0)}")
    }

    test("segment round trip: masks of the image's size, then by image_id") {
        val model = modelFor("segment") ?: skip("the server lists no segment model")
        val (w, h) = 96 to 64
        val image = BufferedImage(w, h, BufferedImage.TYPE_INT_RGB)
        val g = image.createGraphics()
        g.color = java.awt.Color.WHITE
        g.fillRect(30, 16, 36, 32)
        g.dispose()
        val png = ByteArrayOutputStream().also { ImageIO.write(image, "png", it) }.toByteArray()
        val t0 = System.nanoTime()
        val first = client.segment(png, listOf(SegmentPoint(48.0, 32.0, 1)), options = SegmentOptions(model = model.id, multimask = true))
        assertTrue(first.masks.isNotEmpty(), "no masks")
        assertTrue(first.best in first.masks.indices)
        for (m in first.masks) {
            assertEquals(PngSize(w, h), PngSize.of(m.png), "mask $m")
            assertTrue(m.score.isFinite(), "mask score ${m.score}")
        }
        val id = assertNotNull(first.imageId, "no image_id to reuse")
        val second = client.segment(id, box = Box(30.0, 16.0, 66.0, 48.0), options = SegmentOptions(model = model.id))
        assertTrue(second.masks.isNotEmpty())
        assertEquals(false, second.encoderRan, "the image's embedding was not reused")
        assertEquals(PngSize(w, h), PngSize.of(second.bestMask.png))
        val bad = assertFailsWith<EdgeException.BadRequest> { client.segment("not an image".toByteArray(), listOf(SegmentPoint(1.0, 1.0))) }
        report("segment", "model=${model.id} masks=${first.masks.size} best_score=${first.bestMask.score} ms=${ms(t0)} bad=${bad.serverMessage}")
    }
}
